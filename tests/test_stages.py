"""Training stages and the method registry: continued pre-training on plain text (blocks, loss
on every token), the tiny preset built by it, chaining pt into sft, and registered methods
bringing their own config sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitune import methods
from unitune.cli import main
from unitune.config import TrainConfig
from unitune.data.templates import get_template
from unitune.errors import UserError
from unitune.models.loading import load_tokenizer
from unitune.run import open_model, read_run
from unitune.train import stages


@pytest.fixture
def corpus(tmp_path) -> Path:
    lines = [f"the number {i} comes after {i - 1} and before {i + 1}." for i in range(1, 60)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pt_groups_documents_into_blocks_with_the_loss_on_every_token(tmp_path, test_preset,
                                                                      corpus):
    tok = load_tokenizer(str(test_preset))
    cfg = TrainConfig(stage="pt", data=[str(corpus)], output_dir=str(tmp_path / "o"),
                      max_length=32)
    build = stages.get("pt").build(cfg, tok, get_template("raw"), False, False)
    rows, validation, report, lines = build(tmp_path / "work")
    docs = corpus.read_text().splitlines()
    expected = [i for doc in docs for i in tok(doc)["input_ids"] + [tok.eos_token_id]]
    got = [i for row in rows for i in row["input_ids"]]
    assert got == expected  # every document, in order, each closed by EOS; nothing lost
    assert all(row["labels"] == row["input_ids"] for row in rows)  # loss on every token
    assert all(len(row["input_ids"]) == 32 for row in list(rows)[:-1])
    assert report["train"] == {"documents": len(docs), "blocks": len(rows),
                               "tokens": len(expected), "block_length": 32}
    assert validation is None and "59 documents" in lines[0]


@pytest.mark.parametrize("extra,expected", [
    ({"packing": True}, "packing"),
    ({"dedupe": True}, "dedupe"),
    ({"augment": {"cot_suffix": "en"}}, "augment"),
])
def test_pt_refuses_instruction_data_keys(tmp_path, corpus, extra, expected):
    cfg = TrainConfig(stage="pt", data=[str(corpus)], output_dir=str(tmp_path / "o"), **extra)
    with pytest.raises(UserError, match=f"stage=pt .*{expected}"):
        stages.get("pt").check(cfg, False)


@pytest.mark.slow
def test_pt_then_sft_on_the_pretrained_model(tmp_path, test_preset, corpus, synth_data):
    pt = tmp_path / "pt"
    assert main(["train", "stage=pt", "method=full", f"--data={corpus}", "-o", str(pt),
                 "--base-model", "tiny-llama-test", "--max-steps", "3", "--batch-size", "2",
                 "max_length=32", "validation_split=0.2", "--no-progress",
                 "device=cpu"]) == 0
    record = read_run(pt)
    assert record.kind == "pt" and record.status == "finished"
    assert record.data["validation"]["blocks"] >= 1 and record.metrics["eval_loss"]
    sft = tmp_path / "sft"
    assert main(["train", f"--data={synth_data['train']}", "-o", str(sft), "--base-model",
                 str(pt), "--max-steps", "2", "--batch-size", "4", "--no-progress",
                 "lora.r=4", "device=cpu"]) == 0
    assert read_run(sft).base_model_path == str(pt)
    model, tok, template = open_model(sft, device="cpu")
    assert template.name == "alpaca"  # the family's: pt's rendering is not a chat format
    assert main(["generate", str(sft), "the number 3", "--max-new-tokens", "3"]) == 0


def test_rows_past_the_model_s_positions_get_a_warning(tmp_path, test_preset, capfd):
    """The test preset has 256 positions: 512-token blocks run past them; 256 do not."""
    corpus = tmp_path / "long.txt"
    corpus.write_text("count a b c d e f g h i j k l m n o p q r s t u v w x y z " * 60 + "\n")
    for max_length, warned in ((512, True), (256, False)):
        out = tmp_path / f"o{max_length}"
        assert main(["train", "stage=pt", f"--data={corpus}", "-o", str(out), "--base-model",
                     "tiny-llama-test", "--max-steps", "1", "--batch-size", "1",
                     f"max_length={max_length}", "--no-progress", "device=cpu"]) == 0
        said = "".join(capfd.readouterr())
        assert ("past the 256 positions tiny-llama-test was trained on" in said) == warned, said


def test_the_tiny_preset_is_a_pt_run(test_preset):
    record = read_run(test_preset)
    assert record.kind == "pt" and record.method == "full" and record.template == "raw"
    assert record.metrics["steps"] == json.loads((test_preset / "preset.json").read_text())[
        "pretrain_steps"]
    assert (test_preset / "model.safetensors").exists() and (test_preset / "loss.png").exists()


def test_an_unknown_stage_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--data", "x.json", "-o", str(tmp_path / "o"), "stage=sfft"]) == 2
    assert "unknown stage (did you mean 'sft'?)" in capsys.readouterr().err


def test_every_registered_method_brings_its_config_section():
    fields = TrainConfig.model_fields
    for method in methods.all_methods():
        assert method.name and method.summary
        for key, schema in method.sections:
            assert fields[key].annotation is schema, (method.name, key)
    assert fields["method"].description.endswith(", ".join(methods.names()))
    composable = {m.name: m.composable for m in methods.all_methods() if m.composable}
    assert composable == {"lora": "lora", "rslora": "lora", "dora": "lora", "qlora": "lora",
                          "adalora": "lora", "ia3": "ia3", "adapter_seq": "bottleneck",
                          "adapter_par": "bottleneck", "full": "full", "freeze": "full"}
    assert {m.name for m in methods.all_methods() if m.whole_model} == {"full", "freeze"}


@pytest.mark.slow
def test_a_merged_run_as_base_keeps_the_chat_format_it_learned(tmp_path, test_preset,
                                                                synth_data):
    """A merged run's tokenizer carries unitune's chat_template; template: auto on it is the
    format that run trained with (alpaca's input slot included), not a generic render."""
    args = ["--data", str(synth_data["train"]), "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "lora.r=4", "device=cpu"]
    assert main(["train", *args, "-o", str(tmp_path / "a"), "--base-model", "tiny-llama-test",
                 "template=alpaca"]) == 0
    assert main(["merge", str(tmp_path / "a"), "-o", str(tmp_path / "m")]) == 0
    assert main(["train", *args, "-o", str(tmp_path / "b"), "--base-model",
                 str(tmp_path / "m")]) == 0
    assert read_run(tmp_path / "b").template == "alpaca"
