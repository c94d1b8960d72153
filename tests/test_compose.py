"""Module arithmetic: the paper's operators as properties, stock-PEFT loading, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unitune.cli import main
from unitune.compose.compose import compose
from unitune.compose.expr import bind, parse, parse_sweep
from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.train.recipe import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def modules(tmp_path_factory, test_preset, synth_data):
    """Two adapters per method from the same initialisation (same seed), different data."""
    root = tmp_path_factory.mktemp("modules")
    rows = json.loads(synth_data["train"].read_text())
    halves = [root / "first.json", root / "second.json"]
    halves[0].write_text(json.dumps(rows[::2]))
    halves[1].write_text(json.dumps(rows[1::2]))
    for method in ("lora", "ia3", "adapter_seq"):
        for i, data in enumerate(halves):
            train(TrainConfig(base_model="tiny-llama-test", data=[str(data)], method=method,
                              output_dir=str(root / f"{method}{i}"), max_steps=3,
                              batch_size=4, lr=5e-2, seed=0, device="cpu", template="alpaca",
                              lora={"r": 4, "dropout": 0.0},
                              adapter={"bottleneck_size": 8}),
                  log=lambda *a: None, progress=False)
    train(TrainConfig(base_model="tiny-llama-test", data=[str(halves[0])], method="lora",
                      output_dir=str(root / "lora_qv"), max_steps=1, device="cpu",
                      lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}),
          log=lambda *a: None, progress=False)
    return root


def w(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_expression_parsing():
    assert bind(parse("0.5*math + 0.5*code"), None) == [(0.5, "math"), (0.5, "code")]
    assert bind(parse("chat - 0.6*toxic"), None) == [(1.0, "chat"), (-0.6, "toxic")]
    assert bind(parse("cls_a + lm_b - lm_a"), None) == [(1, "cls_a"), (1, "lm_b"), (-1, "lm_a")]
    assert bind(parse("λ*a + (1-λ)*b"), 0.25) == [(0.25, "a"), (0.75, "b")]
    assert parse_sweep("λ=0:1:0.25") == [0, 0.25, 0.5, 0.75, 1]
    with pytest.raises(UserError, match="column 5: the expression ends"):
        parse("a + ")
    with pytest.raises(UserError, match="column 3: expected '\\+' or '-'"):
        parse("a b")
    with pytest.raises(UserError, match="uses λ"):
        bind(parse("a - λ*b"), None)
    with pytest.raises(UserError, match="stop >= start"):
        parse_sweep("λ=1:0:0.1")
    with pytest.raises(UserError, match=r"in \[0, 1\]"):
        parse_sweep("λ=0:2:0.5")
    with pytest.raises(UserError, match="outside"):
        bind(parse("λ*a"), 1.5)


def test_negating_twice_is_the_identity(modules, tmp_path):
    once = compose("-1*lora0", tmp_path / "neg", modules)
    twice = compose(f"-1*{once}", tmp_path / "negneg", modules)
    for key, value in w(modules / "lora0").items():
        assert torch.equal(w(twice)[key], value), key


def test_lambda_one_and_zero_give_back_the_inputs(modules, tmp_path):
    for method in ("lora", "ia3", "adapter_seq"):
        for lam, src in ((1.0, 0), (0.0, 1)):
            out = compose(f"λ*{method}0 + (1-λ)*{method}1", tmp_path / f"{method}{lam}",
                          modules, lam=lam)
            for key, value in w(modules / f"{method}{src}").items():
                assert torch.allclose(w(out)[key], value), (method, lam, key)


def _delta(weights, key_a, scale):
    return scale * weights[key_a.replace("lora_A", "lora_B")] @ weights[key_a]


def test_lora_negation_is_exactly_minus_delta_w(modules, tmp_path):
    neg = w(compose("-1*lora0", tmp_path / "neg", modules))
    orig = w(modules / "lora0")
    for key in orig:
        if "lora_A" in key:
            assert torch.equal(neg[key], orig[key])
            assert torch.equal(_delta(neg, key, 1), -_delta(orig, key, 1))


def test_ia3_negation_is_two_minus_l(modules, tmp_path):
    neg = w(compose("-1*ia30", tmp_path / "neg", modules))
    scaled = w(compose("-0.3*ia30", tmp_path / "neg3", modules))
    for key, value in w(modules / "ia30").items():
        assert torch.allclose(neg[key], 2 - value)
        assert torch.allclose(scaled[key], 1 - 0.3 * (value - 1))


def test_bottleneck_negation_negates_the_up_projection(modules, tmp_path):
    neg = w(compose("-1*adapter_seq0", tmp_path / "neg", modules))
    for key, value in w(modules / "adapter_seq0").items():
        expected = -value if ".adapter.up." in key else value
        assert torch.equal(neg[key], expected), key


def test_delta_semantics_equal_the_dense_sum(modules, tmp_path):
    cfg = json.loads((modules / "lora0" / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    out = compose("0.3*lora0 - 0.7*lora1", tmp_path / "delta", modules, semantics="delta")
    got, a, b = w(out), w(modules / "lora0"), w(modules / "lora1")
    new_cfg = json.loads((out / "adapter_config.json").read_text())
    assert new_cfg["r"] == 8 and new_cfg["lora_alpha"] == 8
    for key in a:
        if "lora_A" in key:
            dense = 0.3 * _delta(a, key, scale) - 0.7 * _delta(b, key, scale)
            assert torch.allclose(_delta(got, key, 1), dense, atol=1e-6)
    low = w(compose("0.3*lora0 - 0.7*lora1", tmp_path / "low", modules, semantics="delta",
                    rank=4))
    assert all(t.shape[0] == 4 for k, t in low.items() if "lora_A" in k)


def test_composed_adapter_loads_in_stock_peft_with_the_expected_logits(modules, tmp_path,
                                                                        test_preset):
    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from unitune.run import open_model

    out = compose("0.5*lora0 + 0.5*lora1", tmp_path / "mix", modules)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "compose"
    assert info["sources"]["expression"] == "0.5*lora0 + 0.5*lora1"
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    ours, _, _ = open_model(out, device="cpu")
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(test_preset)),
                                      str(out)).eval()
    manual = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(test_preset)),
                                       str(modules / "lora0")).eval()
    a, b = w(modules / "lora0"), w(modules / "lora1")
    set_peft_model_state_dict(manual, {k: 0.5 * a[k] + 0.5 * b[k] for k in a})
    with torch.no_grad():
        expected = manual(input_ids=ids).logits
        assert torch.allclose(ours(input_ids=ids).logits, expected, atol=1e-6)
        assert torch.allclose(stock(input_ids=ids).logits, expected, atol=1e-6)


def test_bad_inputs_fail_before_any_weight_is_touched(modules, tmp_path):
    with pytest.raises(UserError, match="unknown module 'nope'"):
        compose("lora0 + nope", tmp_path / "x", modules)
    with pytest.raises(UserError, match="different methods"):
        compose("lora0 + ia30", tmp_path / "x", modules)
    with pytest.raises(UserError, match="different target modules"):
        compose("lora0 + lora_qv", tmp_path / "x", modules)
    with pytest.raises(UserError, match="delta applies to LoRA"):
        compose("ia30 + ia31", tmp_path / "x", modules, semantics="delta")
    assert not (tmp_path / "x").exists()


def test_compose_and_merge_cli(modules, tmp_path, capsys, test_preset):
    out = tmp_path / "c"
    assert main(["compose", "lora0 - 0.5*lora1", "-o", str(out), "--root", str(modules)]) == 0
    assert main(["compose", "lora0 - ", "-o", str(tmp_path / "bad"), "--root",
                 str(modules)]) == 2
    assert "column" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert main(["merge", str(out), "-o", str(merged)]) == 0
    assert (merged / "model.safetensors").exists() and (merged / "template.json").exists()
    from unitune.run import open_model

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
    with pytest.raises(UserError, match="does not fit"):
        run("w", init_adapter=str(x), lora={"r": 8})


def test_sweep_by_exact_match_and_by_perplexity_bound(modules, tmp_path, synth_data):
    from unitune.compose.compose import sweep

    res = sweep("λ*lora0 + (1-λ)*lora1", tmp_path / "em", [0.0, 0.5, 1.0], modules,
                eval_data=str(synth_data["test"]), log=lambda *a: None)
    assert [p["lambda"] for p in res["points"]] == [0.0, 0.5, 1.0]
    best = max(p["exact_match"] for p in res["points"])
    assert next(p for p in res["points"] if p["lambda"] == res["chosen_lambda"])[
        "exact_match"] == best
    assert (tmp_path / "em" / "sweep.png").exists()
    assert (tmp_path / "em" / "sweep.md").read_text().count("\n| ") == 4
    ref = tmp_path / "ref.txt"
    ref.write_text("Count the letters. a b c 3\nFind the largest number. 1 7 2 7\n")
    res = sweep("lora0 - λ*lora1", tmp_path / "ppl", [0.0, 0.5, 1.0], modules,
                ppl_text=str(ref), ppl_bound=0.5, log=lambda *a: None)
    base = res["points"][0]["perplexity"]
    assert len({round(p["perplexity"], 6) for p in res["points"]}) == 3  # each λ is its own model
    ok = [p["lambda"] for p in res["points"] if p["perplexity"] <= base + 0.5]
    assert res["chosen_lambda"] == max(ok)
    from unitune.eval.perplexity import perplexity, read_reference, reference_windows
    from unitune.run import open_model

    model, tok, template = open_model(tmp_path / "ppl", device="cpu")  # the written adapter
    chosen = next(p for p in res["points"] if p["lambda"] == res["chosen_lambda"])
    windows = reference_windows(read_reference(str(ref)), tok, template)
    assert perplexity(model, windows) == pytest.approx(chosen["perplexity"], rel=1e-5)
    assert json.loads((tmp_path / "ppl" / "run.json").read_text())["sources"]["terms"][1][
        "coef"] == -res["chosen_lambda"]
    with pytest.raises(UserError, match="needs λ"):
        sweep("lora0 - lora1", tmp_path / "n", [0.0], modules, ppl_text=str(ref))
