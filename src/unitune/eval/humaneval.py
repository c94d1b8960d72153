"""HumanEval (Chen et al., 2021): functional correctness of generated code, pass@k.

Reads the official file (``HumanEval.jsonl`` or ``.jsonl.gz``, or any ``HumanEval*.jsonl``) from
a local directory; completes each prompt through the chat engine (raw continuation, 0-shot,
stopping at the benchmark's stop sequences); runs prompt + completion + the task's tests in
the sandbox (``eval/sandbox.py``); reports pass@k with the unbiased estimator. Samples and
their outcomes are appended to a JSON-lines file as they finish, so a rerun continues.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import Answerer
from unitune.jsonl import read_jsonl

STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]  # the harness's own
DOWNLOAD = ("download HumanEval.jsonl.gz from https://github.com/openai/human-eval "
            "(data/HumanEval.jsonl.gz) into it")


def read_problems(data_dir: str | Path) -> list[dict]:
    """The problems of the HumanEval file in ``data_dir``, checked field by field."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"HumanEval: {folder} is not a directory; {DOWNLOAD}")
    files = sorted(folder.glob("HumanEval*.jsonl*"))
    if not files:
        raise UserError(f"HumanEval: no HumanEval*.jsonl(.gz) in {folder}; {DOWNLOAD}")
    return read_jsonl(files[0], ("task_id", "prompt", "test", "entry_point"))


def program(problem: dict, completion: str) -> str:
    """The program that passes when the completion is right (the harness's construction)."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c pass."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(problems: list[dict], completions: dict[str, list[str]], timeout_s: float = 10.0,
          workers: int | None = None) -> dict[str, list[bool]]:
    """Whether each completion passes its task's tests, run in the sandbox in parallel."""
    from unitune.eval.sandbox import run_program

    by_id = {p["task_id"]: p for p in problems}
    jobs = [(tid, i, program(by_id[tid], c)) for tid, cs in completions.items()
            for i, c in enumerate(cs)]
    results = {tid: [False] * len(cs) for tid, cs in completions.items()}
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
        for (tid, i, _), outcome in zip(jobs, pool.map(
                lambda job: run_program(job[2], timeout_s), jobs), strict=True):
            results[tid][i] = outcome.passed
    return results


def evaluate(model: Answerer, data_dir: str, out: Path, n: int = 1,
             ks: tuple[int, ...] = (1,), temperature: float = 0.8, max_new_tokens: int = 384,
             limit: int | None = None, seed: int = 0, timeout_s: float = 10.0,
             log=print) -> dict:
    """Generate ``n`` completions per problem (greedy when n == 1, else sampled), test them,
    report pass@k; ``out`` (JSON lines) keeps every sample, keyed by the model and the
    decoding, and a rerun continues from the samples of the same model and decoding."""
    from tqdm import tqdm

    from unitune.eval.judge import cache_key
    from unitune.infer.engine import Request, TooLarge
    from unitune.infer.generate import Decoding

    if any(k > n for k in ks):
        raise UserError(f"pass@k needs k <= n samples per problem (k={max(ks)}, n={n}); "
                        f"raise --n")
    problems = read_problems(data_dir)[:limit]
    decoding = Decoding(max_new_tokens=max_new_tokens, do_sample=n > 1,
                        temperature=temperature if n > 1 else 1.0, seed=seed)
    key = cache_key([model.identity(decoding), STOPS])
    done: dict[str, list[dict]] = {}
    for row in read_jsonl(out, fields=("task_id",), appended=True):
        if row.get("key") == key:  # (another model's or decoding's samples do not count)
            done.setdefault(row["task_id"], []).append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [p for p in problems if len(done.get(p["task_id"], [])) < n]
    if len(todo) < len(problems):
        log(f"{out}: {len(problems) - len(todo)} of {len(problems)} problems already done")
    try:
        engine = model.engine() if todo else None  # (a model that cannot load stops here)
        with out.open("a", encoding="utf-8") as f:
            for problem in tqdm(todo, desc="humaneval", unit="problem"):
                have = len(done.get(problem["task_id"], []))
                try:
                    job = engine.generate(Request(model.served, problem["prompt"], decoding,
                                                  n=n - have, stops=STOPS))
                except TooLarge as exc:  # (not a failed problem: a setting to change)
                    raise UserError(f"humaneval {problem['task_id']}: {exc} (lower --n or "
                                    "--max-new-tokens)") from None
                except UserError as exc:  # (a prompt over the model's context): said
                    rows = [{"task_id": problem["task_id"], "completion": "", "passed": False,
                             "error": str(exc)}] * (n - have)
                else:
                    completions = [s.text for s in job.seqs]
                    passed = score([problem], {problem["task_id"]: completions}, timeout_s)
                    rows = [{"task_id": problem["task_id"], "completion": text, "passed": ok}
                            for text, ok in zip(completions, passed[problem["task_id"]],
                                                strict=True)]
                for row in rows:
                    done.setdefault(problem["task_id"], []).append(row)
                    f.write(json.dumps({**row, "key": key}) + "\n")
                f.flush()
    finally:
        model.done()
    counts = [(len(rows[:n]), sum(r["passed"] for r in rows[:n]))
              for rows in (done[p["task_id"]] for p in problems)]
    errors = sum("error" in r for rows in done.values() for r in rows)
    if errors:
        log(f"humaneval: {errors} samples could not be generated (see 'error' in {out})")
    report = {"task": "humaneval", "problems": len(problems), "samples_per_problem": n,
              "samples_not_generated": errors,
              "temperature": temperature if n > 1 else 0.0, "max_new_tokens": max_new_tokens,
              "seed": seed, "stops": STOPS}
    for k in ks:
        report[f"pass@{k}"] = sum(pass_at_k(m, c, k) for m, c in counts) / len(counts)
    return report
