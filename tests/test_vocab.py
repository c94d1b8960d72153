"""The Chinese-LLaMA vocabulary workflow on the real tokenizers of ../shared/data/tokenizers:
`vocab extend` keeps every LLaMA id and about halves the tokens of Chinese text; bad inputs
are one-line errors with nothing left behind; and the whole chain works on a tiny model:
continued pre-training with trained embeddings on the grown vocabulary, merge, SFT, merge,
reload, generate."""

from __future__ import annotations

import json

import pytest
import yaml

from unitune.cli import main


@pytest.fixture(scope="module")
def tokenizers(shared_data, tmp_path_factory) -> dict:
    """LLaMA-2's tokenizer as a folder, and the same extended with the Chinese pieces."""
    from unitune.models.vocab import base_tokenizer

    root = tmp_path_factory.mktemp("tok")
    llama, chinese = (shared_data / "tokenizers" / f for f in ("llama2_sp.model",
                                                                "chinese_sp.model"))
    assert main(["vocab", "extend", "--base", str(llama), "--add", str(chinese), "-o",
                 str(root / "zh"), "--sample",
                 str(shared_data / "instruct" / "alpaca_zh_1k.json")]) == 0
    base_tokenizer(llama).save_pretrained(str(root / "llama"))  # as the hub has it:
    (root / "llama" / "tokenizer.model").write_bytes(llama.read_bytes())  # with its .model
    return {"llama": root / "llama", "zh": root / "zh", "llama_model": llama,
            "chinese_model": chinese}


def test_extend_keeps_every_id_and_halves_chinese_tokens(tokenizers, shared_data, capsys):
    from transformers import AutoTokenizer

    old = AutoTokenizer.from_pretrained(str(tokenizers["llama"]))
    new = AutoTokenizer.from_pretrained(str(tokenizers["zh"]))
    assert len(old) == 32000 and len(new) == 49953  # the source's 32,000 + Chinese -> 49,953
    vocab = old.get_vocab()
    assert all(new.convert_tokens_to_ids(piece) == i for piece, i in vocab.items())
    report = json.loads((tokenizers["zh"] / "vocab_report.json").read_text())
    assert 0.4 < report["ratio"] < 0.6  # about half the tokens per character
    english = json.loads((shared_data / "instruct" / "alpaca_en_2k.json").read_text())[:50]
    for record in english:  # new pieces never win a merge: English text never grows
        assert len(new(record["output"]).input_ids) <= len(old(record["output"]).input_ids)
    text = "我们今天去公园散步。The weather is nice."
    assert len(new(text).input_ids) < len(old(text).input_ids)
    assert new.decode(new(text).input_ids, skip_special_tokens=True) == text
    import sentencepiece as spm  # the slow form is the SentencePiece model itself

    sp = spm.SentencePieceProcessor(model_file=str(tokenizers["zh"] / "tokenizer.model"))
    assert sp.get_piece_size() == 49953 and sp.decode(sp.encode(text)) == text
    assert [1, *sp.encode(text)] == new(text).input_ids


def test_bad_vocabulary_inputs_are_one_line_errors(tokenizers, shared_data, tmp_path, capsys):
    not_sp = shared_data / "instruct" / "alpaca_zh_1k.json"
    args = ["vocab", "extend", "--base", str(tokenizers["llama_model"]), "--add"]
    assert main([*args, str(not_sp), "-o", str(tmp_path / "x")]) == 2
    assert "not a SentencePiece model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    assert main([*args, str(tokenizers["chinese_model"]), "-o", str(tokenizers["zh"])]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    from transformers import AutoTokenizer  # a base with a token after its pieces

    padded = AutoTokenizer.from_pretrained(str(tokenizers["llama"]))
    padded.add_special_tokens({"pad_token": "<pad>"})
    padded.save_pretrained(str(tmp_path / "padded"))
    (tmp_path / "padded" / "tokenizer.model").write_bytes(
        tokenizers["llama_model"].read_bytes())
    assert main(["vocab", "extend", "--base", str(tmp_path / "padded"), "--add",
                 str(tokenizers["chinese_model"]), "-o", str(tmp_path / "y")]) == 2
    assert "appending pieces would take their ids" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    (tmp_path / "blank.txt").write_text("\n\n")  # a sample with no text: no ratio to print
    assert main([*args, str(tokenizers["chinese_model"]), "-o", str(tmp_path / "z"),
                 "--sample", str(tmp_path / "blank.txt")]) == 0
    assert "tokens per character" not in capsys.readouterr().out
    assert main([*args, str(tokenizers["chinese_model"]), "-o", str(tmp_path / "w"),
                 "--sample", str(tmp_path / "missing.txt")]) == 2  # before any work
    assert "missing.txt" in capsys.readouterr().err and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_the_chinese_llama_chain_on_a_tiny_model(tokenizers, shared_data, tmp_path, capsys):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.run import open_model, read_run

    torch.manual_seed(0)  # an "English base": LLaMA-2's vocabulary, tiny
    base = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(str(base))
    tokenizers_llama = tokenizers["llama"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (base / name).write_bytes((tokenizers_llama / name).read_bytes())
    zh = json.loads((shared_data / "instruct" / "alpaca_zh_1k.json").read_text())
    text = tmp_path / "zh.jsonl"
    text.write_text("".join(json.dumps({"text": r["output"]}, ensure_ascii=False) + "\n"
                            for r in zh[:64]))
    common = {"max_steps": 2, "batch_size": 4, "device": "cpu", "max_length": 128}
    pt = tmp_path / "pt.yaml"
    pt.write_text(yaml.safe_dump({"stage": "pt", "base_model": str(base),
                                  "tokenizer": str(tokenizers["zh"]), "data": [str(text)],
                                  "output_dir": str(tmp_path / "pt"), "lora": {"r": 4},
                                  "modules_to_save": ["embed_tokens", "lm_head"], **common}))
    assert main(["train", str(pt), "--no-progress"]) == 0, capsys.readouterr().err
    record = read_run(tmp_path / "pt")
    assert record.model_patches == {"vocab_size": 49953}
    assert main(["merge", str(tmp_path / "pt"), "-o", str(tmp_path / "pt_merged")]) == 0
    sft = tmp_path / "sft.yaml"
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(zh[:32], ensure_ascii=False))
    sft.write_text(yaml.safe_dump({"base_model": str(tmp_path / "pt_merged"),
                                   "data": [str(data)], "template": "alpaca",
                                   "output_dir": str(tmp_path / "sft"), "lora": {"r": 4},
                                   **common}))
    assert main(["train", str(sft), "--no-progress"]) == 0, capsys.readouterr().err
    assert main(["merge", str(tmp_path / "sft"), "-o", str(tmp_path / "final")]) == 0
    model, tokenizer, _ = open_model(str(tmp_path / "final"), device="cpu")
    assert len(tokenizer) == 49953
    assert model.get_input_embeddings().weight.shape[0] == 49953
    assert model.get_output_embeddings().weight.shape[0] == 49953
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "final"), "用一句话介绍北京。", "--max-new-tokens",
                 "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()

    # for llama.cpp: the grown vocabulary as a SentencePiece-style ("llama") GGUF tokenizer
    from transformers import AutoTokenizer

    assert main(["export", "gguf", str(tmp_path / "final"), "-o", str(tmp_path / "gguf"),
                 "--type", "f16"]) == 0
    read_back = AutoTokenizer.from_pretrained(str(tmp_path / "gguf"),
                                              gguf_file="final-f16.gguf")
    text = "北京是中国的首都。Beijing is the capital."
    assert len(read_back) == 49953
    # (whether transformers' GGUF reader adds the BOS the file asks for depends on its
    # version: 5.17 does not; the flag itself is checked in the file)
    assert read_back(text, add_special_tokens=False).input_ids == \
        tokenizer(text, add_special_tokens=False).input_ids
    from gguf import GGUFReader

    field = GGUFReader(tmp_path / "gguf" / "final-f16.gguf").fields[
        "tokenizer.ggml.add_bos_token"]
    assert bool(field.parts[field.data[0]][0]) and tokenizer(text).input_ids[0] == \
        tokenizer.bos_token_id


def test_a_tokenizer_that_does_not_extend_the_base_s_gets_a_warning(test_preset, shared_data,
                                                                     tmp_path):
    """tokenizer= must keep every base id (what `vocab extend` builds): another vocabulary
    would read the base's trained rows for other tokens."""
    from types import SimpleNamespace

    from transformers import LlamaTokenizer

    from unitune.models.loading import load_tokenizer
    from unitune.train.recipe import Recipe

    base = load_tokenizer(str(test_preset))
    grown = load_tokenizer(str(test_preset))
    grown.add_tokens(["北京", "上海"])
    other = LlamaTokenizer(vocab_file=str(shared_data / "tokenizers" / "llama2_sp.model"))
    for tokenizer, warned in ((grown, False), (other, True)):
        said = []
        Recipe._check_extends(SimpleNamespace(tokenizer=tokenizer, log=said.append,
                                              cfg=SimpleNamespace(tokenizer="tok")), base)
        assert bool(said) == warned and all("does not extend the base's" in s for s in said)
