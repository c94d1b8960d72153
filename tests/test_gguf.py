"""GGUF export: a LoRA run (merged first) as f16 and q8_0, verified twice, by the programs that
consume the files: transformers reads them back (its GGUF loader) and llama.cpp itself runs
them (llama-cpp-python, built from source); both agree with transformers on the merged model's
next-token predictions. Qwen2 (attention biases) and Qwen3 (query/key norms) models agree the
same way, and llama.cpp splits text with a byte-level BPE exactly as the tokenizer does. The
metadata carries the tokenizer, special ids and chat template; an Ollama Modelfile is
written; what GGUF cannot hold is refused with nothing left behind."""

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
    assert "GGUF export supports llama, mistral, qwen2, qwen3 models; this is 'gpt2'" in \
        capsys.readouterr().err
    assert main(["export", "gguf", "tiny-llama-test", "-o", str(out), "--type", "q4_k"]) == 2
    assert "unknown GGUF type 'q4_k'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # nothing written half-way


def _qwen(kind: str, folder, tokenizer):
    """A tiny Qwen2 or Qwen3 model (random weights, biases and norms not at their defaults)
    with ``tokenizer``, saved in ``folder``; the embedding has spare rows (reloaded as a Qwen
    tokenizer, a tokenizer may gain Qwen's <|endoftext|>)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    config = (Qwen2Config if kind == "qwen2" else Qwen3Config)(
        vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=kind == "qwen3", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **({"head_dim": 32} if kind == "qwen3" else {}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                weight.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.2)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_qwen_models_export_and_agree_in_llama_cpp_and_transformers(kind, test_preset,
                                                                     tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llama_cpp = _llama_cpp()
    tokenizer = AutoTokenizer.from_pretrained(str(test_preset))
    model = _qwen(kind, tmp_path / kind, tokenizer)
    assert main(["export", "gguf", str(tmp_path / kind), "-o", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / f"{kind}-f16.gguf"
    # (transformers' GGUF loader reads no head_dim for qwen3, whose head_dim is not
    # hidden / heads, in real Qwen3 models as here: llama.cpp alone checks that file)
    back = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32) if kind == "qwen2" else None
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0]
            if back is not None:
                assert (back(torch.tensor([ids])).logits[0] - expected).abs().max() < 0.02
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[:len(ids)])
        assert (scores.argmax(-1) == expected.argmax(-1).numpy()).all()
        assert np.abs(scores - expected.numpy()).max() < 0.05


def _byte_level_bpe(texts: list[str], split: str):
    """A byte-level BPE tokenizer trained on ``texts``, splitting text with ``split`` first
    (as Qwen2's and Llama 3's tokenizers do)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")


QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
               "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def test_byte_level_pre_tokenizers_get_llama_cpp_s_names():
    from unitune.export.gguf import _pre_tokenizer

    def spec(pattern: str) -> dict:
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}}

    warned = []
    assert _pre_tokenizer(spec(QWEN2_SPLIT), warned.append) == "qwen2"
    llama3 = QWEN2_SPLIT.replace("\\p{N}|", "\\p{N}{1,3}|", 1)
    assert _pre_tokenizer(spec(llama3), warned.append) == "llama-bpe"
    assert _pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel"}}, warned.append) == "gpt-2"
    assert not warned
    assert _pre_tokenizer(spec("\\s+"), warned.append) == "default"
    assert "splits text with its default pattern" in warned[0]


@pytest.mark.slow
def test_llama_cpp_splits_text_as_the_byte_level_tokenizer_does(synth_data, tmp_path):
    import gguf

    from unitune.data.readers import read_conversations
    from unitune.models.loading import load_tokenizer

    llama_cpp = _llama_cpp()
    texts = [t.content for c in read_conversations(str(synth_data["train"])) for t in c.turns]
    _qwen("qwen2", tmp_path / "bpe", _byte_level_bpe(texts, QWEN2_SPLIT))
    assert main(["export", "gguf", str(tmp_path / "bpe"), "-o", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / "bpe-f16.gguf"
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2"
    tokenizer = load_tokenizer(str(tmp_path / "bpe"))  # (as training and inference load it)
    llm = llama_cpp.Llama(str(path), n_ctx=128, verbose=False, vocab_only=True)
    for text in [*texts[:20], "count 1234567 apples, it's 3.14!\n\n  done", "把数字写成中文 42"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            tokenizer(text, add_special_tokens=False).input_ids, text
