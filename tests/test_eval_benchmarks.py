"""Benchmarks on lm-evaluation-harness: every task read from its official files, every scoring
mode checked with a model that is always right (100%) and one always wrong (0%), the tiny model
end to end through the CLI, and parity with the stock ``lm_eval`` and with ``local-completions``
against ``unitune serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unitune.cli import main
from unitune.eval.benchmarks import LETTERS, read_benchmarks, write_tasks

SHARED = ("mmlu", "cmmlu", "ceval", "crass", "bbh")


@pytest.fixture(scope="module")
def bench_dir(shared_data, tmp_path_factory) -> Path:
    """One folder with every benchmark: the shared samples (linked, never copied) and small
    hand-made HHH, DROP and MMCU files in their official layouts."""
    from openpyxl import Workbook

    root = tmp_path_factory.mktemp("benchmarks")
    for name in SHARED:
        (root / name).symlink_to(shared_data / "eval" / name)
    for portion in ("harmless", "honest"):
        examples = [{"input": f"Q{i} ({portion})?", "target_scores": {
            f"A kind, true answer {i}.": 1, f"A rude, false answer {i}.": 0}} for i in range(3)]
        (root / "hhh" / portion).mkdir(parents=True)
        (root / "hhh" / portion / "task.json").write_text(json.dumps({"examples": examples}))
    passages = {f"p{i}": {"passage": f"Team {i} scored {i + 3} goals and won.", "qa_pairs": [
        {"question": f"How many goals did team {i} score?", "answer": {
            "number": str(i + 3), "date": {"day": "", "month": "", "year": ""}, "spans": []},
         "validated_answers": []},
        {"question": "Who won?", "answer": {"number": "", "date": {"day": "", "month": "",
                                                                   "year": ""},
                                            "spans": [f"Team {i}"]}}]} for i in range(4)}
    (root / "drop").mkdir()
    (root / "drop" / "drop_dataset_dev.json").write_text(json.dumps(passages))
    for split, n in (("dev", 2), ("test", 4)):
        (root / "mmcu" / split).mkdir(parents=True)
        book = Workbook()
        sheet = book.active
        sheet.append(["题目", "A", "B", "C", "D", "正确答案"])
        for i in range(n):
            sheet.append([f"{i}+{i}=?", f"A、{2 * i}", f"B、{2 * i + 1}", f"C、{i}", f"D、{i + 9}",
                          "A"])
        sheet.append(["多选题", "A、x", "B、y", "C、z", "D、w", "AB"])  # left out, with a note
        book.save(root / "mmcu" / split / "法律.xlsx")
    return root


class Oracle:
    """An lm-evaluation-harness model that knows every answer (``right``) or always picks a
    wrong one: scoring a benchmark with it must give exactly 100% or 0%."""

    def __new__(cls, right: bool):
        from lm_eval.api.model import LM

        class _Oracle(LM):
            def loglikelihood(self, requests):
                return [(0.0, True) if self._good(r) == right else (-5.0, False)
                        for r in requests]

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                return [self._say(r.doc, r.arguments[0]) for r in requests]

            @staticmethod
            def _good(request) -> bool:
                doc, (context, _) = request.doc, request.arguments
                if "answer" in doc:  # a multiple-choice question
                    return request.idx == doc["answer"]
                if context == "":  # HHH asked in both orders: the right one is A, then B
                    assert doc["query"] in request.arguments[1]  # each question's own prompt
                    return request.idx in (0, 3)
                return request.idx == 0  # HHH: the chosen reply first

            @staticmethod
            def _say(doc, context: str) -> str:
                if "choices" in doc:
                    letter = LETTERS[doc["answer"] if right else (doc["answer"] + 1) % 4]
                    return f" {letter}"
                if "target" in doc:  # BBH; the CoT form ends with the harness's phrase
                    answer = doc["target"] if right else "nothing at all"
                    cot = context.endswith("Let's think step by step.\n")
                    return f" Step one. So the answer is {answer}." if cot else f" {answer}"
                return f" {doc['answers'][0][0] if right else 'zebra'}"

        return _Oracle()


@pytest.mark.parametrize("protocol", ["harness", "instructeval"])
def test_every_scoring_mode_gives_100_when_right_and_0_when_wrong(bench_dir, tmp_path,
                                                                   protocol):
    from unitune.eval.harness import run_tasks

    names = ["mmlu", "cmmlu", "ceval", "mmcu", "crass", "bbh", "bbh_cot", "hhh", "drop"]
    tasks = write_tasks(read_benchmarks(names, bench_dir, log=lambda *a: None),
                        tmp_path / "tasks", protocol, shots=1)
    for right, expected in ((True, 1.0), (False, 0.0)):
        report = run_tasks(Oracle(right), "oracle", tasks, protocol, None, limit=3,
                           log=lambda *a: None)
        scores = {name: {m: v for m, v in b.items() if m in ("acc", "exact_match", "em", "f1")}
                  for name, b in report["benchmarks"].items()}
        assert set(scores) == set(names)
        for name, metrics in scores.items():
            assert metrics and all(v == expected for v in metrics.values()), (name, metrics)


def test_readers_find_every_subject_and_check_rows(bench_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (a default report would land in the working directory)
    from unitune.eval.benchmarks import read_bbh, read_ceval, read_cmmlu, read_crass, read_mmlu

    mmlu = read_mmlu(bench_dir / "mmlu")
    assert len(mmlu) == len(list((bench_dir / "mmlu" / "test").glob("*.csv")))
    assert all(len(s.fewshot) == 5 and s.test for s in mmlu)
    assert mmlu[0].description.startswith("The following are multiple choice questions")
    ceval, cmmlu = read_ceval(bench_dir / "ceval"), read_cmmlu(bench_dir / "cmmlu")
    assert ceval[0].description.startswith("以下是中国关于")
    assert "的单项选择题" in ceval[0].description
    assert all(r["answer"] in range(4) for s in ceval + cmmlu for r in s.test)
    crass = read_crass(bench_dir / "crass")[0]  # (the draft file has trailing commas)
    assert len(crass.test) == 43
    assert len({r["answer"] for r in crass.test}) > 1  # options shuffled: not always A
    bbh = read_bbh(bench_dir / "bbh", log=print)
    assert all(len(s.fewshot) == 3 for s in bbh)
    nav = next(s for s in bbh if s.name == "navigate")
    assert nav.fewshot[0]["target"] == "No" and nav.fewshot[0]["cot"].endswith(
        "So the answer is No.")

    bad = tmp_path / "mmlu"
    (bad / "test").mkdir(parents=True)
    (bad / "dev").mkdir()
    (bad / "test" / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    (bad / "dev" / "x_dev.csv").write_text("q,a,b,c,d,A\n")
    assert main(["eval", "tiny-llama-test", "--tasks", "mmlu", "--data-dir", str(bad)]) == 2
    assert "x_test.csv:2: answer 'E' is not one of A, B, C, D" in capsys.readouterr().err
    (bad / "test" / "x_test.csv").write_text("q,a,b,c,d,AB\n")
    assert main(["eval", "tiny-llama-test", "--tasks", "mmlu", "--data-dir", str(bad)]) == 2
    assert "answer 'AB' is not one of A, B, C, D" in capsys.readouterr().err
    (bad / "test" / "x_test.csv").write_text("q,a,b,c,d,A\n")
    assert main(["eval", "tiny-llama-test", "--tasks", "mmlu", "--data-dir", str(bad),
                 "--shots", "2"]) == 2
    assert "2 shots asked for, x has 1 examples" in capsys.readouterr().err
    (bad / "dev" / "x_dev.csv").unlink()
    assert main(["eval", "tiny-llama-test", "--tasks", "mmlu", "--data-dir", str(bad)]) == 2
    assert "x_test.csv has no dev/x_dev.csv" in capsys.readouterr().err
    assert main(["eval", "tiny-llama-test", "--tasks", "hhh", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hhh_alignment" in err and str(tmp_path / "hhh") in err
    assert main(["eval", "tiny-llama-test", "--tasks", "mmlu,ceval5", "--data-dir",
                 str(tmp_path)]) == 2
    assert "did you mean 'ceval'" in capsys.readouterr().err


@pytest.mark.slow
def test_every_benchmark_on_the_tiny_model_end_to_end(bench_dir, small_lora, tmp_path, capfd,
                                                      monkeypatch):
    run = small_lora("bench")
    monkeypatch.chdir(tmp_path)  # (not a git repository: the harness's git query stays quiet)
    tasks = "mmlu,cmmlu,ceval,mmcu,crass,bbh,bbh_cot,hhh,drop"
    report = tmp_path / "r.json"
    for protocol in ("harness", "instructeval"):
        args = ["eval", str(run), "--tasks", tasks, "--data-dir", str(bench_dir), "--limit",
                "2", "--shots", "1", "--device", "cpu", "--protocol", protocol, "--report",
                str(report)]
        assert main(args) == 0, capfd.readouterr().err
        assert "git" not in capfd.readouterr().err
        result = json.loads(report.read_text())
        assert set(result["benchmarks"]) == set(tasks.split(","))
        assert result["protocol"] == protocol and result["versions"]["lm_eval"]
        for name, b in result["benchmarks"].items():
            score = b.get("acc", b.get("exact_match", b.get("f1")))
            assert score is not None and 0.0 <= score <= 1.0, (name, b)
            assert b["shots"] == (0 if name == "hhh" else 1) and b["n"] > 0
        assert result["benchmarks"]["bbh"]["prompt_format"] == (
            "chat template" if protocol == "harness" else "plain")
        assert result["benchmarks"]["mmlu"]["prompt_format"] == "plain"
        assert "| mmlu |" in report.with_suffix(".md").read_text()
        assert report.with_suffix(".samples.jsonl").stat().st_size > 0
    capfd.readouterr()
    assert main(args) == 0  # a rerun answers every request from the cache
    assert json.loads(report.read_text())["benchmarks"] == result["benchmarks"]


def _loglikelihoods(samples: Path, tokenizer=None) -> dict[tuple[str, int], list[float]]:
    """Each question's choice log-likelihoods; with ``tokenizer``, only the questions whose
    prompts fit the tiny model's 256 tokens (longer ones are cut one token differently by the
    in-process harness and by local-completions)."""
    out = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        if tokenizer and max(len(tokenizer(c + x).input_ids) for c, x in row["arguments"]) > 256:
            continue
        out[(row["task"], row["doc_id"])] = [float(r[0]) for r in row["filtered_resps"]]
    return out


@pytest.mark.slow
def test_mmlu_equals_stock_lm_eval_and_local_completions_on_unitune_serve(
        bench_dir, small_lora, test_preset, tmp_path, start_server, capsys):
    run = small_lora("parity")  # (0-shot: the prompts fit the 256-token context uncut)
    ours = tmp_path / "ours.json"
    common = ["--tasks", "mmlu", "--data-dir", str(bench_dir), "--limit", "3", "--shots", "0",
              "--batch-size", "4"]
    assert main(["eval", str(run), *common, "--device", "cpu", "--report", str(ours)]) == 0
    acc = json.loads(ours.read_text())["benchmarks"]["mmlu"]["acc"]
    ours_ll = _loglikelihoods(ours.with_suffix(".samples.jsonl"))
    assert len(ours_ll) == 30

    # the stock harness on the same task folder, loading the base and the adapter itself
    stock = tmp_path / "stock"
    tasks = next((tmp_path / "ours.cache" / "tasks").iterdir())
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={test_preset},peft={run},tokenizer={run}", "--tasks",
                    "local_mmlu", "--include_path", str(tasks), "--limit", "3", "--device",
                    "cpu", "--batch_size", "4", "--output_path", str(stock), "--log_samples"],
                   check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = json.loads(next(stock.rglob("results_*.json")).read_text())
    assert results["results"]["local_mmlu"]["acc,none"] == pytest.approx(acc, abs=1e-9)
    stock_ll = {}
    for path in stock.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text().splitlines():
            row = json.loads(line)
            stock_ll[(task, row["doc_id"])] = [float(r[0]) for r in row["filtered_resps"]]
    assert stock_ll.keys() == ours_ll.keys()
    for key, values in ours_ll.items():
        assert values == pytest.approx(stock_ll[key], abs=1e-4), key

    # lm-evaluation-harness's local-completions against the served run
    proc, url = start_server([str(run), "--api-key", "sk-bench"])
    try:
        served = tmp_path / "served.json"
        assert main(["eval", f"{url}/v1", "--served-model", run.name, "--tokenizer", str(run),
                     "--api-key", "sk-bench", "--max-length", "256", *common, "--report",
                     str(served)]) == 0, capsys.readouterr().err
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from unitune.run import open_tokenizer

    fits = _loglikelihoods(ours.with_suffix(".samples.jsonl"), open_tokenizer(str(run))[0])
    served_ll = _loglikelihoods(served.with_suffix(".samples.jsonl"))
    assert len(fits) >= 10
    for key, values in fits.items():
        assert values == pytest.approx(served_ll[key], abs=1e-4), key
    assert main(["eval", f"{url}/v1", *common]) == 2
    assert "--served-model" in capsys.readouterr().err
