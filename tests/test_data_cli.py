"""`unitune data ...` and training on catalog names, mixes, packing and other templates."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from unitune.cli import main

pytestmark = pytest.mark.slow


def test_list_and_filters(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "35 datasets" in out and "belle_cn" in out and "xp3" in out
    assert main(["data", "list", "--lang", "CN", "--gen", "SI"]) == 0
    out = capsys.readouterr().out
    assert "belle_cn" in out and "alpaca " not in out
    assert main(["data", "list", "--task", "XX"]) == 2
    assert "allowed values" in capsys.readouterr().err


def test_info(capsys):
    assert main(["data", "info", "alpaca"]) == 0
    out = capsys.readouterr().out
    assert "52,002" in out and "QingyiSi/Alpaca-CoT" in out
    assert main(["data", "info", "alpaka"]) == 2
    assert "did you mean 'alpaca'" in capsys.readouterr().err


def test_check_reads_on_past_a_broken_json_lines_line(tmp_path, capsys):
    """Each JSON Lines line stands alone: one that is not JSON (or not UTF-8) is one bad
    record, and the records after it are still checked."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{not json\n'
                     b'{"instruction": "", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n'
                     b'{"instruction": "c", "output": "d"}\n')
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert [line.split(": ")[0] for line in captured.err.strip().splitlines()] == [
        f"{path}:2:2", f"{path}:3", f"{path}:4"], captured.err
    assert "2 conversations; 3 invalid" in captured.out
    csv = tmp_path / "table.jsonl"  # not JSON Lines at all: one error, not one per line
    csv.write_text("name,age\nbob,3\nann,4\n")
    assert main(["data", "check", str(csv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "table.jsonl:1:1: invalid JSON" in err[0] and "JSON Lines" in err[0]


def test_check_reports_every_bad_record(shared_data, capsys):
    path = shared_data / "instruct" / "alpaca_en_2k.json"
    assert main(["data", "check", str(path)]) == 2
    captured = capsys.readouterr()
    bad = captured.err.strip().splitlines()
    assert len(bad) == 4 and all(line.startswith(f"{path}:") for line in bad)
    assert "1996 conversations; 4 invalid" in captured.out
    assert main(["data", "check", str(shared_data / "instruct" / "sharegpt_500.json"),
                 str(shared_data / "instruct" / "dpo_en_demo.json")]) == 0
    out = capsys.readouterr().out
    assert "500 conversations; 0 invalid" in out and "300 preference pairs" in out


def test_convert(shared_data, tmp_path, capsys):
    out = tmp_path / "sg.json"
    src = shared_data / "instruct" / "sharegpt_500.json"
    assert main(["data", "convert", str(src), str(out), "--to", "openai"]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 500 and rows[0]["messages"][0] == {"role": "user",
                                                           "content": "Who are you?"}
    assert main(["data", "convert", str(src), str(out), "--to", "openai"]) == 2  # exists
    assert main(["data", "convert", str(src), str(tmp_path / "x.jsonl"), "--to", "flan"]) == 2
    assert "cannot be written as flan" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_preview_marks_trained_tokens(shared_data, test_preset, capsys):
    assert main(["data", "preview", str(shared_data / "instruct" / "sharegpt_500.json"),
                 "--base-model", "tiny-llama-test", "--template", "vicuna", "-n", "1",
                 "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[[ I am Vicuna, a language model" in out and "You too!<|eos|>]]" in out
    assert "[[Who are you?" not in out and "USER: Who are you?" in out


def test_stats_writes_histogram(shared_data, test_preset, tmp_path, capsys):
    png = tmp_path / "h.png"
    assert main(["data", "stats", str(shared_data / "instruct" / "alpaca_zh_1k.json"),
                 "--base-model", "tiny-llama-test", "--max-length", "128", "--plot",
                 str(png)]) == 0
    out = capsys.readouterr().out
    assert "records: 1000" in out and "at max_length=128" in out
    assert png.stat().st_size > 1000


def test_train_by_catalog_name(tmp_path, synth_data, test_preset, monkeypatch, capsys):
    monkeypatch.setenv("UNITUNE_DATA_DIR", str(tmp_path / "catalog"))
    out = tmp_path / "run"
    args = ["train", "--data", "alpaca", "-o", str(out), "--base-model", "tiny-llama-test",
            "--max-steps", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "QingyiSi/Alpaca-CoT" in err and str(tmp_path / "catalog" / "alpaca") in err
    (tmp_path / "catalog" / "alpaca").mkdir(parents=True)
    (tmp_path / "catalog" / "alpaca" / "part.json").write_text(synth_data["train"].read_text())
    assert main(args) == 0
    assert json.loads((out / "run.json").read_text())["metrics"]["steps"] == 1


def test_mix_pack_mask_and_template_travel(tmp_path, shared_data, synth_data, test_preset):
    cfg = {
        "base_model": "tiny-llama-test", "output_dir": str(tmp_path / "run"),
        "data": [{"path": str(synth_data["train"]), "count": 20},
                 {"path": str(shared_data / "instruct" / "sharegpt_500.json"), "count": 10}],
        "validation_split": 0.2, "template": "chatml", "packing": True, "masking": "last",
        "max_length": 512, "max_steps": 2, "batch_size": 2, "dedupe": True,
        "augment": {"cot_suffix": "en"}, "data_workers": 2,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--no-progress"]) == 0
    assert not (tmp_path / "run" / "data").exists()  # the run's Arrow tables are cleaned up
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["template"] == "chatml" and info["packing"] and info["masking"] == "last"
    sources = info["data"]["sources"]
    assert [s["taken"] for s in sources.values()] == [20, 10]
    assert info["data"]["validation_from_split"] == 6
    assert info["data"]["train"]["kept"] == 24
    assert json.loads((tmp_path / "run" / "template.json").read_text())["name"] == "chatml"
    effective = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert effective["template"] == "chatml"


def test_generate_warns_when_the_template_is_overridden(tmp_path, synth_data, test_preset,
                                                        capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(synth_data["train"]), "-o", str(out), "--base-model",
                 "tiny-llama-test", "--max-steps", "1", "--template", "vicuna",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "hi", "--max-new-tokens", "2"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["generate", str(out), "hi", "--max-new-tokens", "2", "--template",
                 "alpaca"]) == 0
    assert "trained with template 'vicuna'" in capsys.readouterr().err


def test_compare_methods(tmp_path, synth_data, test_preset, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "lora,ia3,adapter_seq", "--out", str(out), "--test",
                 str(synth_data["test"]), f"data={synth_data['train']}",
                 "base_model=tiny-llama-test", "max_steps=2", "logging_steps=1",
                 "--no-progress"]) == 0
    rows = json.loads((out / "study.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["lora", "ia3", "adapter_seq"]
    assert all(0 <= r["exact_match"] <= 1 and r["trainable_%"] > 0 for r in rows)
    assert (out / "study_loss.png").stat().st_size > 1000
    assert "| lora |" in (out / "study.md").read_text()
    printed = capsys.readouterr()
    assert printed.out == (out / "study.md").read_text()  # the table; the log: stderr
    assert "[3/3] adapter_seq: training" in printed.err
    assert main(["compare", "--methods", "lora,lorra", "--out", str(tmp_path / "x"),
                 f"data={synth_data['train']}"]) == 2
    assert "unknown method 'lorra'" in capsys.readouterr().err


def test_preview_headers_name_the_kept_examples(tmp_path, test_preset, capsys):
    """An example dropped for length must not shift the file:line of the ones shown after it."""
    data = tmp_path / "d.jsonl"
    records = [{"instruction": "Say alpha.", "output": "alpha"},
               {"instruction": "Say beta.", "output": " ".join(["beta"] * 200)},
               {"instruction": "Say gamma.", "output": "gamma"}]
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["data", "preview", str(data), "--base-model", "tiny-llama-test",
                 "--template", "alpaca", "--max-length", "64", "-n", "3",
                 "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "1 dropped" in out.splitlines()[0]
    shown = {where.rsplit(":", 1)[1]: text for where, text in
             re.findall(r"^--- (\S+): \d+ tokens.*---\n([\s\S]*?)(?=\n--- |\Z)", out,
                        re.MULTILINE)}
    assert set(shown) == {"1", "3"}
    assert "Say alpha." in shown["1"] and "Say gamma." in shown["3"]


def test_preview_shows_pairs_and_prompts_as_their_stages_encode_them(tmp_path, test_preset,
                                                                       capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "count a b =", "chosen": "2",
                                 "rejected": "3, since a and b"}) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "count a b c =", "answer": "3"}) + "\n"
                       + json.dumps({"prompt": "max 1 7 ="}) + "\n")
    args = ["--base-model", "tiny-llama-test", "--template", "alpaca", "--color", "never"]
    assert main(["data", "preview", str(pairs), *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("template: alpaca; preference pairs")
    assert "chosen: [[2<|eos|>]]" in out and "rejected: [[3, since a and b<|eos|>]]" in out
    assert "[[" not in out.split("---\n", 1)[1].split("chosen:")[0]  # the prompt: untrained
    assert main(["data", "preview", str(prompts), *args]) == 0
    out = capsys.readouterr().out
    assert "reference answer '3'" in out and "no reference answer" in out
    assert "### Instruction:\ncount a b c =" in out and "[[" not in out.split("---\n", 1)[1]
    assert out.rstrip().endswith("### Response:")  # where the sampled answer begins


def test_stats_describe_pairs_and_prompts_and_one_kind_at_a_time(synth_data, test_preset,
                                                                  tmp_path, capsys):
    args = ["--base-model", "tiny-llama-test", "--template", "alpaca", "--max-length", "64"]
    assert main(["data", "stats", str(synth_data["preference_train"]), *args]) == 0
    out = capsys.readouterr().out
    assert re.search(r"records: \d+ preference pairs \(0 invalid", out)
    assert "tokens per pair (its longer answer with the prompt)" in out
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "count a b c =", "answer": "3"}) + "\n"
                       + json.dumps({"prompt": "max 1 7 ="}) + "\n")
    assert main(["data", "stats", str(prompts), *args]) == 0
    out = capsys.readouterr().out
    assert "records: 2 prompts (1 with a reference answer;" in out and "prompt tokens" in out
    assert main(["data", "stats", str(prompts), str(synth_data["train"]), *args]) == 2
    assert "stats describe one kind of records at a time" in capsys.readouterr().err


def test_preview_names_every_pair_and_prompt_it_drops(tmp_path, test_preset, capsys):
    """More than ten dropped (the report names only the first ten) still shows each record
    under its own file:line."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "yes " * (200 if i < 12 else 1),
             "rejected": "no"} for i in range(15)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "preview", str(pairs), "--base-model", "tiny-llama-test",
                 "--template", "alpaca", "--max-length", "64", "-n", "15",
                 "--color", "never"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"^--- \S+:(\d+): (\w+)", out, re.MULTILINE)
    assert [int(n) for n, _ in headers] == list(range(1, 16))
    assert [w for _, w in headers[:12]] == ["dropped"] * 12
    assert all(w.isdigit() for _, w in headers[12:]) and "q13" in out
