"""GGUF export: a LoRA run (merged first) as f16 and q8_0, verified twice, by the programs that
consume the files: transformers reads them back (its GGUF loader) and llama.cpp itself runs
them (llama-cpp-python, built from source); both agree with transformers on the merged model's
next-token predictions. The metadata carries the tokenizer, special ids and chat template; an
Ollama Modelfile is written; what GGUF cannot hold is refused with nothing left behind."""

from __future__ import annotations

import os

import pytest

from unitune.cli import main

PROMPTS = ["count a b c = 3 max 1 7 2 =", "Sort the numbers: 3 1 2", "把数字写成中文"]


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("UNITUNE_REQUIRE_SHARED") == "1":
            pytest.fail("llama-cpp-python is missing (CI builds it from source)")
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python builds "
                    "llama.cpp with the machine's C compiler)")
    return llama_cpp


@pytest.fixture(scope="module")
def exported(chat_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    assert main(["export", "gguf", str(chat_run), "-o", str(out), "--type", "f16,q8_0"]) == 0
    return out


def _reference(chat_run):
    """The merged model's logits for every prompt (the ids llama.cpp is given too)."""
    import torch

    from unitune.run import open_model

    model, tokenizer, _ = open_model(str(chat_run), device="cpu", log=lambda *a: None)
    model = model.merge_and_unload()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt).input_ids
            out.append((ids, model(torch.tensor([ids])).logits[0]))
    return tokenizer, out


@pytest.mark.slow
def test_transformers_reads_the_files_back(exported, chat_run):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, reference = _reference(chat_run)
    for kind, tolerance in (("f16", 0.02), ("q8_0", 0.3)):
        model = AutoModelForCausalLM.from_pretrained(str(exported), gguf_file=f"run-{kind}.gguf",
                                                     dtype=torch.float32)
        with torch.no_grad():
            for ids, logits in reference:
                got = model(torch.tensor([ids])).logits[0]
                assert (got - logits).abs().max() < tolerance, kind
                assert torch.equal(got.argmax(-1), logits.argmax(-1)), kind
    reader = gguf.GGUFReader(str(exported / "run-f16.gguf"))
    field = reader.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == tokenizer.chat_template
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == len(tokenizer)
    assert (exported / "Modelfile").read_text().startswith("FROM ./run-f16.gguf")


@pytest.mark.slow
def test_llama_cpp_runs_the_files_and_agrees(exported, chat_run):
    llama_cpp = _llama_cpp()
    import numpy as np

    _, reference = _reference(chat_run)
    for kind in ("f16", "q8_0"):
        llm = llama_cpp.Llama(str(exported / f"run-{kind}.gguf"), n_ctx=128, logits_all=True,
                              verbose=False, n_threads=2)
        for ids, logits in reference:
            llm.reset()
            llm.eval(ids)
            scores = np.array(llm.scores[:len(ids)])
            agree = (scores.argmax(-1) == logits.argmax(-1).numpy()).mean()
            assert agree == 1.0, (kind, agree)
            if kind == "f16":
                assert np.abs(scores - logits.numpy()).max() < 0.05


@pytest.mark.slow
def test_what_gguf_cannot_hold_is_refused(synth_data, test_preset, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path / "o"
    assert main(["train", "base_model=tiny-llama-test", f"data={synth_data['train']}",
                 "method=adapter_seq", "max_steps=1", "--device", "cpu", "--no-progress", "-o",
                 str(tmp_path / "adapter")]) == 0
    capsys.readouterr()
    assert main(["export", "gguf", str(tmp_path / "adapter"), "-o", str(out)]) == 2
    assert "cannot be folded into its base weights" in capsys.readouterr().err
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(
        str(tmp_path / "gpt2"))
    (tmp_path / "gpt2" / "tokenizer.json").write_bytes((test_preset / "tokenizer.json")
                                                      .read_bytes())
    (tmp_path / "gpt2" / "tokenizer_config.json").write_bytes(
        (test_preset / "tokenizer_config.json").read_bytes())
    assert main(["export", "gguf", str(tmp_path / "gpt2"), "-o", str(out)]) == 2
    assert "GGUF export supports llama, mistral models; this is 'gpt2'" in \
        capsys.readouterr().err
    assert main(["export", "gguf", "tiny-llama-test", "-o", str(out), "--type", "q4_k"]) == 2
    assert "unknown GGUF type 'q4_k'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # nothing written half-way
