"""Every method: train a few steps, save, reload (here and in a fresh process), same logits."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from unitune.config import TrainConfig
from unitune.data.schema import Conversation
from unitune.errors import UserError
from unitune.train.recipe import train

pytestmark = pytest.mark.slow

CPU_METHODS = ["lora", "rslora", "dora", "adalora", "prefix", "p_tuning", "prompt", "ia3",
               "adapter_seq", "adapter_par", "full", "freeze"]
PEFT_NATIVE = {"lora", "rslora", "dora", "adalora", "prefix", "p_tuning", "prompt", "ia3"}
PROBE = Conversation.single("Sort the numbers in ascending order.", "", "3 1 2")


class Capture(TrainerCallback):
    """Logits of the trained, in-memory model on the probe prompt, at the end of training."""

    def __init__(self, ids):
        self.ids = ids
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=self.ids.to(model.device)).logits.float().cpu()


def probe_ids(test_preset):
    from unitune.data.templates import get_template
    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(test_preset))
    return tok([get_template("alpaca").render_prompt(PROBE, tok)], return_tensors="pt")[
        "input_ids"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, test_preset, synth_data):
    """One short run per method, with the trained model's logits captured in memory."""
    root = tmp_path_factory.mktemp("methods")
    ids = probe_ids(test_preset)
    out = {}
    for method in CPU_METHODS:
        cap = Capture(ids)
        extra = {"adapter": {"placement": "houlsby", "bottleneck_size": 8}} \
            if method == "adapter_seq" else {}
        if method == "adalora":
            extra = {"adalora": {"init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1,
                                 "delta_t": 1}}
        cfg = TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                          output_dir=str(root / method), method=method, max_steps=4,
                          device="cpu",
                          batch_size=4, lr=3e-2, template="alpaca", seed=1,
                          prompt={"num_virtual_tokens": 4}, lora={"r": 4, "dropout": 0.0},
                          freeze={"trainable_layers": 1}, **extra)
        train(cfg, log=lambda *a: None, progress=False, callbacks=[cap])
        out[method] = (root / method, cap.logits)
    return out, ids


FRESH = """
import sys, torch
from safetensors.torch import save_file
from unitune.run import open_model
ids = torch.tensor([[int(x) for x in sys.argv[1].split(",")]])
out = {}
for folder in sys.argv[3:]:
    model, _, _ = open_model(folder, device="cpu")
    with torch.no_grad():
        out[folder.rsplit("/", 1)[-1]] = model(input_ids=ids).logits.float().contiguous()
save_file(out, sys.argv[2])
"""


def test_reload_in_a_fresh_process_gives_identical_logits(runs, tmp_path):
    from safetensors.torch import load_file

    results, ids = runs
    dest = tmp_path / "logits.safetensors"
    folders = [str(folder) for folder, _ in results.values()]
    subprocess.run([sys.executable, "-c", FRESH, ",".join(map(str, ids[0].tolist())),
                    str(dest), *folders], check=True, timeout=600)
    fresh = load_file(str(dest))
    for method, (_, trained) in results.items():
        assert torch.allclose(fresh[method], trained, atol=1e-5), method


def test_the_method_changed_the_model(runs, test_preset):
    from transformers import AutoModelForCausalLM

    results, ids = runs
    base = AutoModelForCausalLM.from_pretrained(str(test_preset)).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    for method, (_, trained) in results.items():
        n = plain.shape[1]
        assert not torch.allclose(trained[:, -n:], plain, atol=1e-4), method


@pytest.mark.parametrize("method", sorted(PEFT_NATIVE))
def test_stock_peft_loads_peft_native_methods(runs, test_preset, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    results, ids = runs
    folder, trained = results[method]
    base = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        logits = stock(input_ids=ids).logits
    assert torch.allclose(logits, trained, atol=1e-5)


def test_run_records_method_and_trainable_share(runs):
    results, _ = runs
    shares = {}
    for method, (folder, _) in results.items():
        info = json.loads((folder / "run.json").read_text())
        assert info["method"] == method
        shares[method] = info["trainable_parameters"] / info["total_parameters"]
    assert shares["full"] == 1.0
    assert shares["prompt"] < shares["lora"] < shares["freeze"] < 1.0


def test_adalora_allocator_ran_every_step(runs):
    results, _ = runs
    folder, _ = results["adalora"]
    config = json.loads((folder / "adapter_config.json").read_text())
    # the allocator pruned ranks: a rank pattern was recorded for the masked modules
    assert config["rank_pattern"], "update_and_allocate never ran"


def test_bottleneck_adapters_are_saved_alone(runs):
    from safetensors.torch import load_file

    results, _ = runs
    for method in ("adapter_seq", "adapter_par"):
        folder, _ = results[method]
        keys = list(load_file(str(folder / "adapter_model.safetensors")))
        assert keys and all(".adapter." in k for k in keys)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["unitune_method"] == method
    seq = json.loads((results["adapter_seq"][0] / "adapter_config.json").read_text())
    assert seq["target_modules"] == ["o_proj", "down_proj"]  # houlsby: attention and MLP


@pytest.mark.parametrize("overrides,message", [
    ({"method": "qlora"}, "qlora (a 4bit base) needs a CUDA GPU"),
    ({"load_in": "8bit"}, "8bit loading needs a CUDA GPU"),
    ({"method": "prompt", "packing": True}, "set packing=false"),
    ({"lora": {"target_modules": ["nope_proj"]}}, "method=lora: Target modules"),
    ({"method": "adalora", "adalora": {"init_r": 2, "target_r": 4}}, "target_r"),
    ({"method": "freeze", "freeze": {"trainable_layers": 99}}, "has 2 layers"),
    ({"method": "adapter_seq", "adapter": {"target_modules": ["nope"]}}, "match no module"),
])
def test_methods_that_do_not_apply_fail_clearly(tmp_path, synth_data, test_preset, overrides,
                                                message):
    cfg = TrainConfig(base_model="tiny-llama-test", data=[str(synth_data["train"])],
                      output_dir=str(tmp_path / "x"), max_steps=1, device="cpu", **overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg, log=lambda *a: None, progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_rank_must_be_positive():
    with pytest.raises(Exception, match="greater than 0"):
        TrainConfig(data=["a.json"], output_dir="o", lora={"r": 0})


def test_embeddings_trained_beside_an_adapter_survive_a_grown_vocabulary(tmp_path, test_preset):
    """Add tokens, resize, train LoRA + modules_to_save=[embed_tokens]: the saved adapter
    carries the resized embedding, reloads with identical logits, and the new rows trained."""
    from transformers import AutoModelForCausalLM

    from unitune.models.loading import load_tokenizer
    from unitune.run import open_model

    tok = load_tokenizer(str(test_preset))
    tok.add_tokens(["<unit1>", "<unit2>"])
    base = AutoModelForCausalLM.from_pretrained(str(test_preset))
    base.resize_token_embeddings(len(tok))
    grown = tmp_path / "grown"
    base.save_pretrained(grown)
    tok.save_pretrained(grown)
    rows = [{"instruction": f"Say the unit {i}.", "output": "<unit1> <unit2>"} for i in range(16)]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    ids = tok(["Say <unit1> and <unit2>"], return_tensors="pt")["input_ids"]
    cap = Capture(ids)
    train(TrainConfig(base_model=str(grown), data=[str(data)], output_dir=str(tmp_path / "run"),
                      max_steps=4, batch_size=4, lr=5e-2, device="cpu", template="alpaca",
                      modules_to_save=["embed_tokens"], lora={"r": 4, "dropout": 0.0}),
          log=lambda *a: None, progress=False, callbacks=[cap])
    model, tok2, _ = open_model(tmp_path / "run", device="cpu")
    assert len(tok2) == len(tok)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, cap.logits, atol=1e-5)
    new_rows = [tok.convert_tokens_to_ids(t) for t in ("<unit1>", "<unit2>")]
    trained = model.get_input_embeddings().weight[new_rows]
    assert not torch.allclose(trained, base.get_input_embeddings().weight[new_rows])


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_seq2seq_t5_trains_saves_reloads_and_generates(tmp_path, test_preset, synth_data,
                                                       method, capsys):
    """An encoder-decoder (T5, built from a config) through the same commands."""
    from transformers import T5Config, T5ForConditionalGeneration

    from unitune.cli import main
    from unitune.models.loading import load_tokenizer
    from unitune.run import open_model

    tok = load_tokenizer(str(test_preset))
    config = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2,
                      num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    base = tmp_path / "t5"
    T5ForConditionalGeneration(config).save_pretrained(base)
    tok.save_pretrained(base)
    enc = tok(["Sort the numbers. 3 1 2"], return_tensors="pt")
    dec = torch.tensor([[tok.pad_token_id, 5, 9, 13]])

    class CaptureSeq2Seq(TrainerCallback):
        logits = None

        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                self.logits = model(**enc, decoder_input_ids=dec).logits

    cap = CaptureSeq2Seq()
    out = tmp_path / "run"
    train(TrainConfig(base_model=str(base), data=[str(synth_data["train"])], output_dir=str(out),
                      method=method, max_steps=3, batch_size=4, lr=3e-2, device="cpu",
                      template="alpaca", lora={"r": 4, "dropout": 0.0}),
          log=lambda *a: None, progress=False, callbacks=[cap])
    model, tok2, template = open_model(out, device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(**enc, decoder_input_ids=dec).logits, cap.logits, atol=1e-5)
    # generation feeds the encoder exactly what training did (T5's closing </s> included)
    from unitune.data.encode import encode_conversations
    from unitune.infer.generate import Decoding, answer

    conv = Conversation.single("Sort the numbers.", "1 2 3", "3 1 2")
    seen, generate = [], model.generate
    model.generate = lambda **kw: (seen.append(kw["input_ids"][0].tolist()), generate(**kw))[1]
    answer(model, tok2, template, [conv], Decoding(max_new_tokens=2))
    (row,), _ = encode_conversations([conv], tok2, template, 256, seq2seq=True)
    assert seen == [row["input_ids"]]
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    assert main(["generate", str(out), "Sort the numbers.", "--input", "3 1 2",
                 "--max-new-tokens", "4"]) == 0
    assert "### Response" not in capsys.readouterr().out  # the answer only, not the prompt


def test_what_cannot_fold_into_the_base_says_why_and_what_to_do():
    from unitune import methods
    from unitune.errors import UserError

    for name in ("lora", "ia3", "adalora", "full", "freeze"):
        methods.get(name).check_foldable("run", "unused")
    for name, why in (("prefix", "virtual tokens"), ("adapter_par", "non-linearity")):
        with pytest.raises(UserError, match=f"^run: method={name} cannot be folded into its "
                           f"base weights \\(.*{why}.*\\); do this instead$"):
            methods.get(name).check_foldable("run", "do this instead")
