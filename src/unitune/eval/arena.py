"""``unitune arena``: models answer the same prompts, a judge compares them pairwise, and the
comparisons become a leaderboard (``eval/ratings.py``).

Answers come from the chat engine (``eval/answers.py``), cached in ``answers.jsonl``. For every
prompt and pair of models the two answers are shown to the judge in a seeded random order
(position bias cancels out over prompts); the judge is any OpenAI-compatible chat endpoint
(``unitune serve`` included), asked with MT-bench's pairwise prompt and its verdict format
(``[[A]]``, ``[[B]]``, ``[[C]]`` for a tie), or a person on the arena page (``serve/web.py``),
whose votes are recorded the same way. Judge calls are retried with backoff, cached in
``judgments.jsonl`` by judge, models, prompt and both answers (a rerun asks nothing twice;
a changed answer or another judge is judged anew), and their token usage is counted; a
reply with no verdict is recorded as unparsed and left out of the ratings. A leaderboard
counts one judge's verdicts.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import Answerer, collect_answers
from unitune.eval.judge import Judge, cache_key
from unitune.jsonl import read_jsonl

JUDGE_SYSTEM = ("Please act as an impartial judge and evaluate the quality of the responses "
                "provided by two AI assistants to the user question displayed below. Avoid "
                "any position bias and do not let the length of the responses influence "
                "your evaluation. Output your final verdict by strictly following this "
                'format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, '
                'and "[[C]]" for a tie.')


def judge_messages(question: str, answer_a: str, answer_b: str, max_chars: int = 2000
                   ) -> list[dict]:
    """MT-bench's pairwise judge prompt (answers cut at ``max_chars``)."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": (
                f"[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n"
                f"{answer_a[:max_chars]}\n[The End of Assistant A's Answer]\n\n"
                f"[The Start of Assistant B's Answer]\n{answer_b[:max_chars]}\n"
                "[The End of Assistant B's Answer]")}]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) from a judge's reply: its last [[X]] verdict, or a reply that
    is nothing but the verdict; None when there is none."""
    found = re.findall(r"\[\[\s*([ABC])\s*\]\]", text)
    if found:
        return found[-1]
    bare = text.strip().strip(".").strip().upper()
    return {"A": "A", "B": "B", "C": "C", "TIE": "C"}.get(bare)


Comparison = tuple[int, str, str, bool]  # (question, first, second, swap)


def schedule(models: list[str], n_questions: int, seed: int = 0) -> list[Comparison]:
    """Every comparison of the arena, (question, first, second, swap): ``swap`` shows
    ``second`` as A. Seeded, so a rerun and a person's page show the same order."""
    rng = random.Random(seed)
    return [(i, first, second, rng.random() < 0.5) for i in range(n_questions)
            for first, second in itertools.combinations(models, 2)]


def shown(item: Comparison, questions: list[str], answers: dict[str, list[str]]
          ) -> tuple[str, str, str]:
    """(question, answer A, answer B) of a comparison, in the order the judge sees them."""
    i, first, second, swap = item
    a, b = (second, first) if swap else (first, second)
    return questions[i], answers[a][i], answers[b][i]


def comparison_key(item: Comparison, questions: list[str], answers: dict[str, list[str]],
                   judge: str) -> str:
    """What a judgment depends on: who judged, the two models and what was shown, so a
    changed prompt or answer, or another judge, is judged anew."""
    return cache_key([judge, item[1], item[2], *shown(item, questions, answers)])


def keyed(models: list[str], questions: list[str], answers: dict[str, list[str]], judge: str,
          seed: int = 0) -> list[tuple[Comparison, str]]:
    """The arena's comparisons (``schedule``), each with its ``comparison_key`` for
    ``judge``."""
    return [(item, comparison_key(item, questions, answers, judge))
            for item in schedule(models, len(questions), seed)]


def record(out: Path, item: Comparison, key: str, reply: str, verdict: str | None,
           judge: str) -> dict:
    """Appends one judgment to ``judgments.jsonl`` (a reply, its verdict, who judged)."""
    i, first, second, swap = item
    row = {"key": key, "index": i, "first": first, "second": second,
           "a": second if swap else first, "b": first if swap else second,
           "reply": reply, "verdict": verdict, "judge": judge}
    with (out / "judgments.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return row


def judgments(out: Path, log=print) -> dict[str, dict]:
    """The judgments made so far, by their ``comparison_key``; a later one replaces an
    earlier (a person may change their mind). Judgments written before they had a key are
    not counted, and said so."""
    rows = read_jsonl(out / "judgments.jsonl", appended=True)
    if legacy := sum("key" not in r for r in rows):
        log(f"{out / 'judgments.jsonl'}: {legacy} judgments from an earlier unitune (without "
            "the answers they judged) are not counted; those comparisons are judged again")
    return {r["key"]: r for r in rows if "key" in r}


def summarize(models: list[str], questions: list[str], answers: dict[str, list[str]],
              out: Path, judge: dict, arena: list[tuple[Comparison, str]],
              done: dict[str, dict], rounds: int = 200, seed: int = 0) -> dict:
    """The leaderboard of the judgments among ``done`` of the ``arena``'s comparisons (as
    ``keyed`` gives them, for ``judge['model']``) (``leaderboard.md/.json/.png`` in
    ``out``)."""
    from unitune.eval.ratings import leaderboard, markdown, plot

    comparisons, unparsed = [], 0
    for _, key in arena:
        row = done.get(key)
        if row is None:
            continue
        if row["verdict"] is None:
            unparsed += 1
            continue
        winner = {"A": row["a"], "B": row["b"], "C": None}[row["verdict"]]
        comparisons.append((row["first"], row["second"], 0.5 if winner is None else
                            float(winner == row["first"])))
    rows = leaderboard(comparisons, rounds, seed)
    report = {"models": models, "prompts": len(questions), "comparisons": len(comparisons),
              "unparsed_verdicts": unparsed, "judge": judge,
              "answer_lengths": {m: sum(len(a) for a in answers[m]) / len(questions)
                                 for m in models},
              "leaderboard": rows}
    (out / "leaderboard.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "leaderboard.md").write_text(
        markdown(rows) if rows else f"No verdicts yet ({unparsed} judge replies without one; "
        "judgments.jsonl holds them).\n", encoding="utf-8")
    if rows:
        plot(rows, out / "leaderboard.png")
    else:  # (no picture of an earlier arena's verdicts beside it)
        (out / "leaderboard.png").unlink(missing_ok=True)
    return report


def arena_answers(models: dict[str, str], questions: list[str], out: Path, decoding,
                  device: str = "auto", log=print) -> dict:
    """Every contestant's answer to every question (cached in ``out``), for a judge or a
    person to compare."""
    if len(models) < 2:
        raise UserError("an arena needs at least two models (--model NAME=RUN, twice)")
    out.mkdir(parents=True, exist_ok=True)
    return collect_answers({name: Answerer(target, device, log)
                            for name, target in models.items()}, questions, out, decoding, log)


def run_arena(models: dict[str, str], questions: list[str], judge: Judge, out: Path,
              decoding, seed: int = 0, rounds: int = 200, device: str = "auto",
              log=print) -> dict:
    """Answers, an LLM's judgments and the leaderboard (``leaderboard.md/.json/.png``)."""
    answers = arena_answers(models, questions, out, decoding, device, log)
    done = judgments(out, log)
    arena = keyed(list(models), questions, answers, judge.model, seed)
    for item, key in arena:
        if key not in done:
            reply = judge.ask(judge_messages(*shown(item, questions, answers)))
            done[key] = record(out, item, key, reply, parse_verdict(reply), judge.model)
    report = summarize(list(models), questions, answers, out, judge.report(), arena, done,
                       rounds, seed)
    log(f"arena: {report['comparisons']} comparisons ({report['unparsed_verdicts']} replies "
        f"without a verdict), judge tokens {judge.usage['prompt_tokens']} in / "
        f"{judge.usage['completion_tokens']} out -> {out / 'leaderboard.md'}")
    return report
