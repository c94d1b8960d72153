"""The CLI end to end, as a user runs it: commands, artefacts, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import the_error

from unitune.cli import main
from unitune.data.synth import DEFAULT_FAMILIES

pytestmark = pytest.mark.slow


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """unitune in a fresh process, exactly as a shell would run it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "unitune.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed (exit 2, see ``the_error``)."""
    assert proc.returncode == 2, proc.stderr
    return the_error(proc.stderr)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, test_preset, synth_data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r1"
    code = main(["train", f"--data={synth_data['train']}",
                 f"--validation-data={synth_data['validation']}", "-o", str(out),
                 "--base-model", "tiny-llama-test", "--max-steps", "3", "lora.r=4",
                 "--batch-size", "4", "--no-progress", "logging_steps=1"])
    assert code == 0
    return out


def test_train_writes_every_artefact(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    for expected in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                     "template.json", "config.yaml", "run.json", "metrics.jsonl", "loss.png",
                     "tb"):
        assert expected in names, expected
    assert any(p.name.startswith("events.out.tfevents") for p in (trained_run / "tb").iterdir())
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "finished" and info["metrics"]["steps"] == 3
    # no GPU kernels on the CPU: the model's own attention; the lean LoRA dropout applies
    assert info["optimizations"] == ["attention: sdpa",
                                     "LoRA dropout inside lora_A (no dropped copy kept)"]
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert info["data"]["train"]["kept"] == 8 * len(DEFAULT_FAMILIES)
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("eval_loss" in r for r in rows)
    # the effective config is complete and typed
    import yaml

    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["lora"]["r"] == 4 and cfg["max_steps"] == 3 and cfg["template"] == "alpaca"
    assert (trained_run / "adapter_model.safetensors").stat().st_size > 10_000
    # the saved tokenizer's chat_template renders what was trained (alpaca here)
    from unitune.data.schema import Conversation
    from unitune.data.templates import get_template
    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(trained_run))
    conv = Conversation.single("Sort the numbers.", "1 2 3")
    assert tok.apply_chat_template([{"role": "user", "content": "Sort the numbers."}],
                                   tokenize=False, add_generation_prompt=True) == \
        tok.bos_token + get_template("alpaca").render_prompt(conv, tok)


def test_generate_uses_the_runs_template(trained_run, capsys):
    from unitune.infer.generate import Decoding, generate_texts
    from unitune.run import open_model

    assert main(["generate", str(trained_run), "Count the letters.", "--input", "a b c",
                 "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    model, tokenizer, template = open_model(trained_run, device="cpu")
    assert template.name == "alpaca"
    prompt = ("Below is an instruction that describes a task, paired with an input that "
              "provides further context. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nCount the letters.\n\n### Input:\na b c\n\n"
              "### Response:\n")
    assert printed == generate_texts(model, tokenizer, [prompt], Decoding(max_new_tokens=6))[0]


def test_eval_prints_per_family_table(trained_run, synth_data, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["eval", str(trained_run), "--data", str(synth_data["test"]),
                 "--max-new-tokens", "4", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "sort" in out
    result = json.loads(report.read_text())
    assert result["n"] == 2 * len(DEFAULT_FAMILIES) and 0.0 <= result["exact_match"] <= 1.0


def test_number_match_scores_gsm8k_style_answers(trained_run, tmp_path, capsys):
    from unitune.data.schema import Conversation
    from unitune.eval.exact_match import score

    gsm = Conversation.single("Tom has 40 apples and buys 2. How many?", "40 + 2 = 42\n#### 42")
    assert score(gsm, "He has 42 apples.", "number") and not score(gsm, "He has 42 apples.")
    assert not score(gsm, "41", "number")
    plain = Conversation.single("Say hi.", "hi")  # (no number: compared whole)
    assert score(plain, " hi ", "number") and not score(plain, "hello", "number")
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": gsm.turns[0].content, "answer": gsm.answer}) + "\n")
    report = tmp_path / "r.json"
    assert main(["eval", str(trained_run), "--data", str(data), "--match", "number",
                 "--max-new-tokens", "4", "--report", str(report)]) == 0
    assert "number match" in capsys.readouterr().out
    assert json.loads(report.read_text())["match"] == "number"
    assert main(["eval", str(trained_run), "--perplexity", str(data), "--match",
                 "number"]) == 2
    assert "--match compares the answers of --data FILE" in capsys.readouterr().err


def test_refuses_to_overwrite_a_finished_run(trained_run):
    before = (trained_run / "adapter_model.safetensors").read_bytes()
    proc = run_cli("train", "--data", "x.json", "-o", str(trained_run))
    err = one_line_error(proc)
    assert "already holds a run" in err and "--overwrite" in err
    assert (trained_run / "adapter_model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args,expected", [
    (["train", "--data", "missing.json", "-o", "{tmp}/o"], "data file not found: missing.json"),
    (["train", "--data", "{bad}", "-o", "{tmp}/o"], "bad.json:3"),
    (["train", "--data", "{noout}", "-o", "{tmp}/o"], "noout.json:2: output: missing"),
    (["train", "--data", "a.json", "-o", "{tmp}/o", "lerning_rate=1"],
     "unknown config key 'lerning_rate'"),
    (["train", "--data", "a.json", "-o", "{tmp}/o", "--lerning-rate", "1"],
     "unknown option '--lerning-rate'"),
    (["train", "--data", "a.json", "-o", "{tmp}/o", "--batch-size", "0"], "batch_size"),
    (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
    (["generate", "{tmp}", "hi"], "neither a unitune run nor a Hugging Face model"),
    (["data", "synth", "--families", "srot", "--out", "{tmp}/s"], "did you mean 'sort'"),
    (["eval", "tiny-llama", "--tasks", "mmlu", "--limit", "-1"],
     "argument --limit: expected a whole number >= 1, got '-1'"),
    (["eval", "tiny-llama", "--tasks", "bbh", "--max-new-tokens", "0"],
     "argument --max-new-tokens: expected a whole number >= 1"),
    (["eval", "tiny-llama", "--tasks", "humaneval", "--timeout", "nan"],
     "argument --timeout: expected a number > 0"),
    (["eval", "tiny-llama", "--tasks", "humaneval", "--timeout", "inf"],
     "argument --timeout: expected a number > 0, got 'inf'"),
    (["serve", "tiny-llama", "--port", "99999"], "expected a whole number in 1..65535"),
    (["generate", "{tmp}", "hi", "--top-p", "2"], "top_p must be in (0, 1], got 2.0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, expected):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]')
    noout = tmp_path / "noout.json"
    noout.write_text('[\n {"instruction": "a"}\n]')
    args = [a.format(tmp=tmp_path, bad=bad, noout=noout) for a in args]
    assert expected in one_line_error(run_cli(*args))
    assert not (tmp_path / "o").exists()


def test_a_port_in_use_is_refused_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in ("serve", "web"):
            err = one_line_error(run_cli(command, str(tmp_path / "no-such-run"), "--port",
                                         port))
            assert f"--port {port}: cannot listen there" in err and "another --port" in err


def test_help_on_every_command():
    for cmd in (["--help"], ["train", "--help"], ["generate", "--help"], ["eval", "--help"],
                ["data", "synth", "--help"], ["quickstart", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(cmd)
        assert exc.value.code == 0


def test_data_synth_is_deterministic(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "a"), "--train", "5"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--train", "5"]) == 0
    for name in ("train.json", "validation.json", "test.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["data", "synth", "--out", str(tmp_path / "a")]) == 2  # not empty


def test_quickstart_smoke(tmp_path, capsys, test_preset):
    out = tmp_path / "qs"
    assert main(["quickstart", "--size", "smoke", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "exact match before" in text and "after" in text
    summary = json.loads((out / "quickstart.json").read_text())
    assert 0 <= summary["before"] <= 1 and 0 <= summary["after"] <= 1
    assert (out / "run" / "adapter_model.safetensors").exists()
    assert main(["quickstart", "--size", "smoke", "--out", str(out)]) == 2


def test_trains_on_real_alpaca_data(tmp_path, shared_data, test_preset, capsys):
    """The byte-level tokenizer takes any text; long real examples are truncated, reported."""
    out = tmp_path / "alpaca"
    path = shared_data / "instruct" / "alpaca_en_2k.json"
    args = ["train", "--data", str(path), "-o", str(out), "--base-model", "tiny-llama-test",
            "--max-steps", "2", "--batch-size", "2", "max_length=64", "--no-progress"]
    # the real file has a record with an empty output: refused, with its line...
    assert main(args) == 2
    assert f"{path}:1422: output: empty" in capsys.readouterr().err
    assert not out.exists()
    # ...or skipped and reported on request
    assert main([*args, "--skip-invalid"]) == 0
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["skipped_invalid"] == len(data["first_invalid"]) == 4
    assert data["first_invalid"][0] == (f"{path}:1422: output: empty; a training example "
                                          "needs an answer")
    train = data["train"]
    assert train["kept"] + sum(train["dropped"].values()) == 1996
    assert train["prompt_truncated"] > 0 and sum(train["dropped"].values()) > 0


def test_train_help_lists_every_config_key_with_its_default(capsys):
    from unitune.config import TrainConfig, _model_keys

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    keys = _model_keys(TrainConfig)
    leaves = [k for k in keys if not any(other.startswith(k + ".") for other in keys)]
    for key in leaves:
        assert f"\n  {key} (" in out, key
    assert "  attention ('auto') [auto|sdpa|flex_attention|eager]: " in out
