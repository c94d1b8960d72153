"""HumanEval: the sandbox stops what a model's code must not do, scoring is exact on known
completions, pass@k is the unbiased estimator, and `unitune eval --tasks humaneval` runs end
to end (and continues) on the real file in ../shared/data/eval/humaneval."""

from __future__ import annotations

import json
import os
import time

import pytest

from unitune.cli import main
from unitune.eval.humaneval import pass_at_k, read_problems, score
from unitune.eval.sandbox import run_program


def test_the_sandbox_stops_loops_memory_bombs_writes_and_the_network(tmp_path):
    outside = tmp_path / "outside.txt"
    assert run_program("x = [i * i for i in range(1000)]\nassert x[3] == 9").passed
    assert run_program("open('mine.txt', 'w').write('x')\nassert open('mine.txt').read()"
                       ).passed
    start = time.time()
    loop = run_program("while True:\n    pass", timeout_s=2)
    assert loop.status == "timeout" and time.time() - start < 10
    bomb = run_program("x = bytearray(50 * 1024**3)", memory_mb=512)
    assert bomb.status == "failed" and "MemoryError" in bomb.detail
    for code, words in [(f"open({str(outside)!r}, 'w').write('x')", "outside the sandbox"),
                        ("import os\nos.remove('/etc/hostname')", "outside the sandbox"),
                        ("import socket\nsocket.create_connection(('1.1.1.1', 80), 2)",
                         "not allowed"),
                        ("import subprocess\nsubprocess.run(['true'])", "not allowed"),
                        ("import ctypes", "ctypes is not allowed")]:
        outcome = run_program(code)
        assert outcome.status == "failed" and words in outcome.detail, (code, outcome)
    assert not outside.exists() and os.path.exists("/etc/hostname")


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 6, 5) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 * 2) / (5 * 4))


def test_known_completions_score_100_and_0_percent(shared_data):
    problems = read_problems(shared_data / "eval" / "humaneval")[:12]
    right = score(problems, {p["task_id"]: [p["canonical_solution"]] for p in problems})
    assert all(ok == [True] for ok in right.values()), right
    wrong = score(problems, {p["task_id"]: ["    return None\n", "    while True: pass\n"]
                             for p in problems}, timeout_s=2)
    assert all(ok == [False, False] for ok in wrong.values()), wrong


@pytest.mark.slow
def test_eval_humaneval_end_to_end_and_resumed(shared_data, test_preset, tmp_path, capsys):
    data_dir = str(shared_data / "eval" / "humaneval")
    report = tmp_path / "he.json"
    args = ["eval", "tiny-llama-test", "--tasks", "humaneval", "--data-dir", data_dir,
            "--limit", "3", "--n", "2", "--k", "1,2", "--max-new-tokens", "8", "--device",
            "cpu", "--report", str(report)]
    assert main(args) == 0
    result = json.loads(report.read_text())["benchmarks"]["humaneval"]
    assert result["problems"] == 3 and result["samples_per_problem"] == 2
    assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
    samples = (tmp_path / "he.humaneval.jsonl").read_text().splitlines()
    assert len(samples) == 6
    assert main(args) == 0  # a rerun continues: nothing generated again
    assert "3 of 3 problems already done" in capsys.readouterr().err
    assert len((tmp_path / "he.humaneval.jsonl").read_text().splitlines()) == 6
    assert main([*args, "--temperature", "0.5"]) == 0  # other sampling: sampled anew
    assert "already done" not in capsys.readouterr().err
    assert len((tmp_path / "he.humaneval.jsonl").read_text().splitlines()) == 12
    missing = tmp_path / "no-such-model"
    assert main(["eval", str(missing), "--tasks", "humaneval", "--data-dir", data_dir,
                 "--limit", "3", "--report", str(tmp_path / "bad.json")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "bad.humaneval.jsonl").exists() or \
        not (tmp_path / "bad.humaneval.jsonl").read_text()  # no failures recorded for it
    assert main(["eval", "tiny-llama-test", "--tasks", "humanevl", "--data-dir", data_dir]) == 2
    assert "did you mean 'humaneval'" in capsys.readouterr().err
    assert main(["eval", "tiny-llama-test", "--tasks", "humaneval", "--data-dir",
                 str(tmp_path)]) == 2
    assert "download HumanEval.jsonl.gz" in capsys.readouterr().err
    (tmp_path / "HumanEval.jsonl").write_text('{"task_id": "x", "prompt": "p"}\n{oops\n')
    assert main(["eval", "tiny-llama-test", "--tasks", "humaneval", "--data-dir",
                 str(tmp_path)]) == 2
    assert "HumanEval.jsonl:1: test: missing" in capsys.readouterr().err
    assert main(["eval", "tiny-llama-test", "--tasks", "humaneval", "--data", "x.json",
                 "--data-dir", data_dir]) == 2
    assert "give one of --data" in capsys.readouterr().err


@pytest.mark.slow
def test_one_evaluation_opens_its_model_once_for_every_kind_of_task(shared_data, tmp_path,
                                                                     monkeypatch):
    import unitune.run

    opened = []
    real = unitune.run.open_model
    monkeypatch.setattr(unitune.run, "open_model",
                        lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    report = tmp_path / "r.json"
    args = ["eval", "tiny-llama-test", "--tasks", "mmlu,humaneval", "--data-dir",
            str(shared_data / "eval"), "--limit", "1", "--shots", "0", "--max-new-tokens", "4",
            "--device", "cpu", "--report", str(report)]
    assert main(args) == 0
    assert opened == ["tiny-llama-test"]  # the harness and the engine share one load
    assert set(json.loads(report.read_text())["benchmarks"]) == {"mmlu", "humaneval"}
    assert main(args) == 0 and len(opened) == 2  # a rerun from the caches: still one load


@pytest.mark.slow
def test_eval_perplexity_slides_its_window(test_preset, tmp_path, capsys):
    from unitune.eval.perplexity import perplexity, read_reference, reference_windows
    from unitune.run import open_model

    text = tmp_path / "ref.txt"
    text.write_text("count a b c = 3 max 1 7 2 = 7 sort 3 1 2 = 1 2 3 " * 12 + "\n")
    model, tok, template = open_model("tiny-llama-test", device="cpu")
    values = {}
    for window, stride in ((64, 64), (64, 16)):
        report = tmp_path / f"ppl{stride}.json"
        assert main(["eval", "tiny-llama-test", "--perplexity", str(text), "--window",
                     str(window), "--stride", str(stride), "--device", "cpu", "--report",
                     str(report)]) == 0
        got = json.loads(report.read_text())
        expected = perplexity(model, reference_windows(read_reference(str(text)), tok,
                                                       template, window, stride))
        assert got["perplexity"] == pytest.approx(expected, rel=1e-6) and got["windows"] > 1
        values[stride] = got["perplexity"]
    assert values[16] != values[64]  # overlapping windows give each token more context
    assert main(["eval", "tiny-llama-test", "--perplexity", str(text), "--stride", "600"]) == 2
    assert "--stride must be" in capsys.readouterr().err
