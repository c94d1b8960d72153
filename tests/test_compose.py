"""Module arithmetic: linearity in the coefficients for every composable method (the update a
result applies, measured through PEFT's own merge or the adapters' outputs), PEFT parity for
the rules both offer, stock-PEFT loading, sweeps, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unitune.cli import main
from unitune.compose.compose import compose, sweep
from unitune.compose.expr import parse, parse_lambda, parse_sweep
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.run import open_model
from unitune.train.recipe import train

pytestmark = pytest.mark.slow

RUNS = {  # name: (method, seed, half of the data, extra config)
    "lora0": ("lora", 0, 0, {}), "lora1": ("lora", 0, 1, {}),
    "lora_a32": ("lora", 0, 1, {"lora": {"r": 4, "alpha": 32, "dropout": 0.0}}),
    "lora_seed5": ("lora", 5, 1, {}),
    "rslora0": ("rslora", 0, 1, {}),
    "ia30": ("ia3", 0, 0, {}), "ia31": ("ia3", 0, 1, {}),
    "adapter_seq0": ("adapter_seq", 0, 0, {}), "adapter_seq1": ("adapter_seq", 0, 1, {}),
    "adapter_seq_seed5": ("adapter_seq", 5, 1, {}),
    "dora0": ("dora", 0, 0, {}), "dora1": ("dora", 0, 1, {}),
    "adalora0": ("adalora", 0, 0, {"adalora": {"init_r": 4, "target_r": 2}}),
    "mts0": ("lora", 0, 0, {"modules_to_save": ["lm_head"]}),
    "mts1": ("lora", 0, 1, {"modules_to_save": ["lm_head"]}),
    "freeze0": ("freeze", 0, 0, {"freeze": {"trainable_layers": 1}}),
    "freeze1": ("freeze", 0, 1, {"freeze": {"trainable_layers": 1}}),
    "lora_qv": ("lora", 0, 0, {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}),
}


@pytest.fixture(scope="module")
def modules(tmp_path_factory, test_preset, synth_data):
    """Runs of every composable method; same seed = same initialisation."""
    root = tmp_path_factory.mktemp("modules")
    rows = json.loads(synth_data["train"].read_text())
    halves = [root / "first.json", root / "second.json"]
    halves[0].write_text(json.dumps(rows[::2]))
    halves[1].write_text(json.dumps(rows[1::2]))
    for name, (method, seed, half, extra) in RUNS.items():
        extra = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                 "adapter": {"bottleneck_size": 8}, **extra}
        train(TrainConfig(base_model="tiny-llama-test", data=[str(halves[half])], method=method,
                          output_dir=str(root / name), max_steps=3, batch_size=4, lr=5e-2,
                          seed=seed, device="cpu", template="alpaca", **extra),
              log=lambda *a: None, progress=False)
    return root


@pytest.fixture(scope="module")
def base_state(test_preset):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(test_preset)).state_dict()


def w(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def update(run, base_state) -> dict[str, torch.Tensor]:
    """What a run changes in the base weights, through PEFT's own merge (or the saved
    weights of a full run)."""
    model, _, _ = open_model(run, device="cpu", log=lambda *a: None)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    state = model.state_dict()
    return {k: state[k].float() - v.float() for k, v in base_state.items()}


def adapter_outputs(run) -> list[torch.Tensor]:
    """Each bottleneck adapter's output on a fixed input."""
    from unitune.methods.bottleneck import BottleneckAdapter

    model, _, _ = open_model(run, device="cpu", log=lambda *a: None)
    h = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [m(h) for m in model.modules() if isinstance(m, BottleneckAdapter)]


def assert_same(got: dict | list, expected: dict | list, atol=2e-6):
    pairs = zip(got.values(), expected.values(), strict=True) if isinstance(got, dict) \
        else zip(got, expected, strict=True)
    worst = max((a - b).abs().max().item() for a, b in pairs)
    assert worst <= atol, worst


def combo(parts: list[tuple[float, dict]]) -> dict:
    return {k: sum(c * u[k] for c, u in parts) for k in parts[0][1]}


# --- expressions -----------------------------------------------------------------------------


def test_expression_parsing():
    def bound(text, values=None, params=(), known=()):
        return parse(text, set(params), lambda n: n in known).bind(values)

    assert bound("0.5*math + 0.5*code") == [(0.5, "math"), (0.5, "code")]
    assert bound("chat - 0.6*toxic") == [(1.0, "chat"), (-0.6, "toxic")]
    assert bound("chat-0.6*toxic") == [(1.0, "chat"), (-0.6, "toxic")]
    assert bound("-0.5*x") == [(-0.5, "x")]
    assert bound("a + a") == [(2.0, "a")]
    assert bound("x + y - y") == [(1.0, "x"), (0.0, "y")]
    assert bound("λ*a + (1-λ)*b", {"λ": 0.25}) == [(0.25, "a"), (0.75, "b")]
    assert bound("lambda*cls + (1-lambda)*(lm_b - lm_a)", {"lambda": 0.2}) == \
        [(0.2, "cls"), (0.8, "lm_b"), (-0.8, "lm_a")]
    assert bound("mu*a + nu*(b - c)", {"mu": 2.0, "nu": 0.5}, params=("mu", "nu")) == \
        [(2.0, "a"), (0.5, "b"), (-0.5, "c")]
    assert bound("my-run - 0.5*other-run", known=("my-run", "other-run")) == \
        [(1.0, "my-run"), (-0.5, "other-run")]
    assert bound("runs/a-b-2*c", known=("runs/a-b",)) == [(1.0, "runs/a-b"), (-2.0, "c")]
    assert parse_sweep("λ=0:1:0.25") == ("λ", [0, 0.25, 0.5, 0.75, 1])
    assert parse_sweep("mu=-1:1:1") == ("mu", [-1, 0, 1])
    assert parse_lambda("0.3") == ("λ", 0.3) and parse_lambda("mu=2") == ("mu", 2.0)
    for text, message in [("a + ", "column 5: the expression ends"),
                          ("a b", "column 3: expected an operator"),
                          ("a*b", "product of two modules"),
                          ("a + 0.5", "stands alone"),
                          ("(a + b", "expected '\\)'"),
                          ("a $ b", "column 3: unexpected character '\\$'")]:
        with pytest.raises(UserError, match=message):
            parse(text)
    with pytest.raises(UserError, match="uses λ"):
        parse("a - λ*b").bind({})
    with pytest.raises(UserError, match="does not use it"):
        parse("a - b").bind({"λ": 0.5})
    with pytest.raises(UserError, match="stop >= start"):
        parse_sweep("λ=1:0:0.1")


# --- linearity ----------------------------------------------------------------------------


@pytest.mark.parametrize("x,y", [("lora0", "lora1"), ("rslora0", "rslora0"), ("ia30", "ia31")])
def test_the_update_is_linear_in_each_coefficient(modules, tmp_path, base_state, x, y):
    dx, dy = update(modules / x, base_state), update(modules / y, base_state)
    for expr, expected in [(f"{x} - 0.5*{x}", combo([(0.5, dx)])),
                           (f"-0.5*{x}", combo([(-0.5, dx)])),
                           (f"-1*{x}", combo([(-1.0, dx)])),
                           (f"{x} + {y} - {y}", dx),
                           (f"{x} + {x}", combo([(2.0, dx)])),
                           (f"0*{x} + {y}", dy)]:
        out = compose(expr, tmp_path / "out", modules, overwrite=True)
        assert_same(update(out, base_state), expected)
    for lam, expected in [(1.0, dx), (0.0, dy)]:
        out = compose(f"λ*{x} + (1-λ)*{y}", tmp_path / "out", modules, {"λ": lam},
                      overwrite=True)
        assert_same(update(out, base_state), expected)


def test_each_input_keeps_its_own_scale(modules, tmp_path, base_state):
    """alpha 8 vs 32, LoRA vs rsLoRA: the output config is the first input's, and every other
    input's B is rescaled to it."""
    d0, d32, drs = (update(modules / n, base_state) for n in ("lora0", "lora_a32", "rslora0"))
    for other, d_other in (("lora_a32", d32), ("rslora0", drs)):
        out = compose(f"0*lora0 + {other}", tmp_path / "o", modules, overwrite=True)
        assert_same(update(out, base_state), d_other)
        assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == 8
        out = compose(f"0.3*lora0 - 0.7*{other}", tmp_path / "o", modules, combine="exact",
                      overwrite=True)
        assert_same(update(out, base_state), combo([(0.3, d0), (-0.7, d_other)]))
    # the paper's convex addition of same-initialisation modules, by hand
    a, b = w(modules / "lora0"), w(modules / "lora_a32")
    out = w(compose("0.5*lora0 + 0.5*lora_a32", tmp_path / "o", modules, overwrite=True))
    for key in a:
        expected = 0.5 * a[key] + (0.5 * 4 if "lora_B" in key else 0.5) * b[key]
        assert torch.allclose(out[key], expected, atol=1e-7), key


def test_bottleneck_scaling_is_exact_and_concatenation_is_the_sum(modules, tmp_path):
    x = adapter_outputs(modules / "adapter_seq0")
    for expr, coef in (("-0.5*adapter_seq0", -0.5), ("adapter_seq0 - 0.5*adapter_seq0", 0.5),
                       ("-1*adapter_seq0", -1.0), ("2*adapter_seq0", 2.0),
                       ("adapter_seq0 + adapter_seq1 - adapter_seq1", 1.0)):
        out = compose(expr, tmp_path / "o", modules, overwrite=True)
        assert_same(adapter_outputs(out), [coef * t for t in x], atol=1e-5)
    out = compose("0.3*adapter_seq0 - 0.7*adapter_seq_seed5", tmp_path / "o", modules,
                  combine="exact", overwrite=True)
    z = adapter_outputs(modules / "adapter_seq_seed5")
    assert_same(adapter_outputs(out), [0.3 * a - 0.7 * b for a, b in zip(x, z, strict=True)],
                atol=1e-5)
    assert json.loads((out / "adapter_config.json").read_text())["bottleneck_size"] == 16
    logs = []
    compose("0.5*adapter_seq0 + 0.5*adapter_seq1", tmp_path / "o", modules, log=logs.append,
            overwrite=True)
    assert logs == []
    compose("0.5*adapter_seq0 + 0.5*adapter_seq_seed5", tmp_path / "o", modules,
            log=logs.append, overwrite=True)
    assert any("different initialisations" in m for m in logs)


@pytest.mark.parametrize("runs", [("dora0", "dora1"), ("adalora0", "lora0")])
def test_dora_and_adalora_compose_exactly_through_their_dense_updates(modules, tmp_path,
                                                                     base_state, runs):
    x, y = runs
    dx, dy = update(modules / x, base_state), update(modules / y, base_state)
    out = compose(f"0.6*{x} - 0.4*{y}", tmp_path / "o", modules, combine="exact")
    assert json.loads((out / "run.json").read_text())["method"] == "lora"
    assert_same(update(out, base_state), combo([(0.6, dx), (-0.4, dy)]), atol=1e-5)
    with pytest.raises(UserError, match="--combine exact"):
        compose(f"0.5*{x} + 0.5*{y}", tmp_path / "p", modules)


def test_modules_to_save_and_full_runs_are_task_vectors(modules, tmp_path, base_state):
    dx, dy = update(modules / "mts0", base_state), update(modules / "mts1", base_state)
    expected = combo([(1.0, dx), (-0.5, dy)])
    assert dx["lm_head.weight"].abs().max() > 0
    out = compose("mts0 - 0.5*mts1", tmp_path / "o", modules, combine="exact")
    assert_same(update(out, base_state), expected, atol=1e-5)
    out = compose("mts0 - 0.5*mts1", tmp_path / "p", modules)
    got = update(out, base_state)["lm_head.weight"]
    assert torch.allclose(got, expected["lm_head.weight"], atol=1e-6)
    # full-weight task arithmetic (the paper's full fine-tuning baseline)
    dx, dy = update(modules / "freeze0", base_state), update(modules / "freeze1", base_state)
    out = compose("freeze0 - 0.5*freeze1", tmp_path / "f", modules)
    assert_same(update(out, base_state), combo([(1.0, dx), (-0.5, dy)]), atol=1e-6)
    model, _, _ = open_model(out, device="cpu")  # a model of its own, no adapter
    assert not hasattr(model, "peft_config")
    out = compose("freeze0 + freeze1", tmp_path / "t", modules, combine="ties", density=0.5)
    assert json.loads((out / "run.json").read_text())["sources"]["density"] == 0.5


# --- parity with PEFT ------------------------------------------------------------------------


def _peft_combined(modules, test_preset, names, weights, seed=0, **kw):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(test_preset)),
                                      str(modules / names[0]), adapter_name="n0")
    for k, name in enumerate(names[1:], 1):
        model.load_adapter(str(modules / name), adapter_name=f"n{k}")
    torch.manual_seed(seed)
    model.add_weighted_adapter([f"n{k}" for k in range(len(names))], weights, "mix", **kw)
    model.set_adapter("mix")
    return model, get_peft_model_state_dict(model, adapter_name="mix")


def _peft_update(model, base_state):
    state = model.merge_and_unload().state_dict()
    return {k: state[k].float() - v.float() for k, v in base_state.items()}


@pytest.mark.parametrize("ours,theirs", [
    ({"combine": "exact"}, {"combination_type": "cat"}),
    ({"combine": "exact", "rank": 3}, {"combination_type": "svd", "svd_rank": 3}),
    ({"combine": "ties", "density": 0.5}, {"combination_type": "ties", "density": 0.5}),
    ({"combine": "ties", "density": 0.5, "rank": 4},
     {"combination_type": "ties_svd", "density": 0.5, "svd_rank": 4}),
    ({"combine": "magnitude_prune", "density": 0.3},
     {"combination_type": "magnitude_prune", "density": 0.3}),
])
def test_lora_rules_match_peft_add_weighted_adapter(modules, tmp_path, base_state, test_preset,
                                                     ours, theirs):
    out = compose("0.7*lora0 - 0.4*lora_a32", tmp_path / "o", modules, **ours)
    peft_model, _ = _peft_combined(modules, test_preset, ["lora0", "lora_a32"], [0.7, -0.4],
                                   **theirs)
    assert_same(update(out, base_state), _peft_update(peft_model, base_state), atol=1e-5)


def test_dare_is_peft_dare_with_the_seed(modules, tmp_path, base_state, test_preset):
    a = compose("0.5*lora0 + 0.5*lora1", tmp_path / "a", modules, combine="dare_linear",
                density=0.5, seed=3)
    b = compose("0.5*lora0 + 0.5*lora1", tmp_path / "b", modules, combine="dare_linear",
                density=0.5, seed=3)
    assert all(torch.equal(w(a)[k], v) for k, v in w(b).items())
    _, theirs = _peft_combined(modules, test_preset, ["lora0", "lora1"], [0.5, 0.5], seed=3,
                               combination_type="dare_linear", density=0.5)
    assert all(torch.allclose(w(a)[k], v) for k, v in theirs.items())


def test_ia3_addition_matches_peft_for_convex_weights(modules, tmp_path, test_preset):
    from peft import IA3Config, PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    ours = w(compose("0.3*ia30 + 0.7*ia31", tmp_path / "o", modules))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(test_preset)),
                                      str(modules / "ia30"), adapter_name="n0")
    model.load_adapter(str(modules / "ia31"), adapter_name="n1")
    assert isinstance(model.peft_config["n0"], IA3Config)
    model.add_weighted_adapter(["n0", "n1"], [0.3, 0.7], "mix")
    theirs = get_peft_model_state_dict(model, adapter_name="mix")
    assert all(torch.allclose(ours[k], v, atol=1e-6) for k, v in theirs.items())


def test_composed_adapter_loads_in_stock_peft_with_the_expected_logits(modules, tmp_path,
                                                                        test_preset):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = compose("0.5*lora0 + 0.5*lora1", tmp_path / "mix", modules)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "compose" and info["sources"]["combine"] == "paper"
    assert info["sources"]["expression"] == "0.5*lora0 + 0.5*lora1"
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    ours, _, _ = open_model(out, device="cpu")
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(test_preset)),
                                      str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, stock(input_ids=ids).logits,
                              atol=1e-6)


# --- bad input, the CLI, sweeps ---------------------------------------------------------------


def test_bad_inputs_fail_before_any_weight_is_touched(modules, tmp_path):
    for expr, kw, message in [
            ("lora0 + nope", {}, "unknown module 'nope'"),
            ("lora0 + ia30", {}, "different methods"),
            ("lora0 + lora_qv", {}, "different target modules"),
            ("lora0 + mts0", {}, "different modules_to_save"),
            ("ia30 + ia31", {"rank": 4}, "--rank applies to LoRA"),
            ("lora0 + lora1", {"combine": "ties"}, "needs --density"),
            ("lora0 + lora1", {"density": 0.5}, "--density applies to"),
            ("adapter_seq0 + adapter_seq1", {"combine": "ties", "density": 0.5},
             "does not apply to bottleneck"),
            ("lora0 + lora1", {"combine": "tie"}, "did you mean 'ties'"),
            ("λ*lora0", {}, "uses λ")]:
        with pytest.raises(UserError, match=message):
            compose(expr, tmp_path / "x", modules, **kw)
    assert not (tmp_path / "x").exists()


def test_compose_and_merge_cli(modules, tmp_path, capsys, test_preset):
    out = tmp_path / "c"
    root = ["--root", str(modules)]
    assert main(["compose", "-0.5*lora0", "-o", str(out), *root]) == 0
    assert main(["compose", "lora0-0.6*lora1", "-o", str(out), "--overwrite", *root]) == 0
    terms = json.loads((out / "run.json").read_text())["sources"]["terms"]
    assert [t["coef"] for t in terms] == [1.0, -0.6]
    assert main(["compose", "mu*lora0 + (1-mu)*(lora1 - lora0)", "--lambda", "mu=0.25", "-o",
                 str(out), "--overwrite", *root]) == 0
    assert main(["compose", "lora0 - ", "-o", str(tmp_path / "bad"), *root]) == 2
    assert "column" in capsys.readouterr().err
    assert main(["compose", "lora0", "--eval-data", "x.json", "-o", str(tmp_path / "bad"),
                 *root]) == 2
    assert "scores a --sweep" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert main(["merge", str(out), "-o", str(merged)]) == 0
    assert (merged / "model.safetensors").exists() and (merged / "template.json").exists()
    ids = torch.tensor([[1, 5, 9, 13]])
    adapter_model, _, _ = open_model(out, device="cpu")
    merged_model, _, _ = open_model(merged, device="cpu")
    with torch.no_grad():
        assert torch.allclose(adapter_model(input_ids=ids).logits,
                              merged_model(input_ids=ids).logits, atol=1e-4)
    assert main(["merge", str(modules / "adapter_seq0"), "-o", str(tmp_path / "m2")]) == 2
    assert "cannot be folded" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["merge", str(out), "-o", str(tmp_path / "q"), "--quantize", "4bit"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_shared_initialisation_is_recorded_and_checked(tmp_path, synth_data, test_preset):
    def run(name, **kw):
        kw.setdefault("lora", {"r": 4})
        return train(TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                                 output_dir=str(tmp_path / name), max_steps=1, device="cpu",
                                 **kw), log=lambda *a: None, progress=False)

    x = run("x", seed=0)
    y = run("y", seed=5, init_adapter=str(x))
    run("z", seed=7)
    assert (x / "adapter_init.safetensors").read_bytes() == \
        (y / "adapter_init.safetensors").read_bytes()
    assert json.loads((y / "run.json").read_text())["adapter_init"]["from"].endswith(
        "x/adapter_init.safetensors")
    logs = []
    compose("0.5*x + 0.5*y", tmp_path / "xy", tmp_path, log=logs.append)
    assert logs == []
    compose("0.5*x + 0.5*z", tmp_path / "xz", tmp_path, log=logs.append)
    assert any("different initialisations" in m for m in logs)
    compose("0.5*x + 0.5*z", tmp_path / "xz2", tmp_path, combine="exact", log=logs.append)
    assert len(logs) == 1  # the exact sum assumes nothing
    with pytest.raises(UserError, match="does not fit"):
        run("w", init_adapter=str(x), lora={"r": 8})


def test_sweep_by_exact_match_and_by_perplexity_bound(modules, tmp_path, synth_data):
    res = sweep("λ*lora0 + (1-λ)*lora1", tmp_path / "em", {"λ": [0.0, 0.5, 1.0]}, modules,
                eval_data=str(synth_data["test"]), log=lambda *a: None)
    assert [p["λ"] for p in res["points"]] == [0.0, 0.5, 1.0]
    best = max(p["exact_match"] for p in res["points"])
    assert next(p for p in res["points"] if p["λ"] == res["chosen"]["λ"])["exact_match"] == best
    assert (tmp_path / "em" / "sweep.png").exists()
    assert (tmp_path / "em" / "sweep.md").read_text().count("\n| ") == 4
    ref = tmp_path / "ref.txt"
    ref.write_text("Count the letters. a b c 3\nFind the largest number. 1 7 2 7\n")
    res = sweep("lora0 - λ*lora1", tmp_path / "ppl", {"λ": [0.0, 0.5, 1.0]}, modules,
                ppl_text=str(ref), ppl_bound=0.5, log=lambda *a: None)
    base = res["points"][0]["perplexity"]
    assert len({round(p["perplexity"], 6) for p in res["points"]}) == 3  # each λ is its own model
    ok = [p["λ"] for p in res["points"] if p["perplexity"] <= base + 0.5]
    assert res["chosen"]["λ"] == max(ok)
    from unitune.eval.perplexity import perplexity, read_reference, reference_windows

    model, tok, template = open_model(tmp_path / "ppl", device="cpu")  # the written adapter
    chosen = next(p for p in res["points"] if p["λ"] == res["chosen"]["λ"])
    windows = reference_windows(read_reference(str(ref)), tok, template)
    assert perplexity(model, windows) == pytest.approx(chosen["perplexity"], rel=1e-5)
    assert json.loads((tmp_path / "ppl" / "run.json").read_text())["sources"]["terms"][1][
        "coef"] == -res["chosen"]["λ"]
    with pytest.raises(UserError, match="needs a parameter"):
        sweep("lora0 - lora1", tmp_path / "n", {"λ": [0.0]}, modules, ppl_text=str(ref))


def test_sweep_over_two_parameters_from_the_cli(modules, tmp_path, synth_data):
    out = tmp_path / "grid"
    assert main(["compose", "a*lora0 + b*(lora1 - lora0)", "--sweep", "a=0:1:0.5", "--sweep",
                 "b=0:1:1", "--eval-data", str(synth_data["test"]), "--root", str(modules),
                 "-o", str(out)]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["points"]) == 6 and set(result["chosen"]) == {"a", "b"}
    assert (out / "sweep.png").exists()
    terms = json.loads((out / "run.json").read_text())["sources"]["terms"]
    a, b = result["chosen"]["a"], result["chosen"]["b"]
    assert [t["coef"] for t in terms] == [pytest.approx(a - b), pytest.approx(b)]


def test_export_vllm_says_what_vllm_serves(modules, capsys):
    for run, words in [("lora0", "--enable-lora --lora-modules lora0="),
                       ("rslora0", "--max-lora-rank 8"),
                       ("dora0", "DoRA"), ("mts0", "modules_to_save"),
                       ("ia30", "not LoRA"), ("freeze0", "vllm serve")]:
        assert main(["export", "vllm", str(modules / run)]) == 0
        printed = capsys.readouterr().out
        assert words in printed, (run, printed)
        if run in ("dora0", "mts0", "ia30"):
            assert f"unitune merge {modules / run} -o" in printed
    assert main(["export", "vllm", str(modules / "adapter_seq0")]) == 0
    assert "cannot be merged" in capsys.readouterr().out
    assert main(["export", "vllm", str(modules / "lora0"), "--bogus"]) == 2
    assert "unknown option '--bogus'" in capsys.readouterr().err
