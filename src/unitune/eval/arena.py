"""``unitune arena``: models answer the same prompts, a judge compares them pairwise, and the
comparisons become a leaderboard (``eval/ratings.py``).

Answers come from the chat engine (``eval/answers.py``), cached in ``answers.jsonl``. For every
prompt and pair of models the two answers are shown to the judge in a seeded random order
(position bias cancels out over prompts); the judge is any OpenAI-compatible chat endpoint
(``unitune serve`` included), asked with MT-bench's pairwise prompt and its verdict format
(``[[A]]``, ``[[B]]``, ``[[C]]`` for a tie). Judge calls are retried with backoff, cached in
``judgments.jsonl`` (a rerun asks nothing twice), and their token usage is counted; a reply
with no verdict is recorded as unparsed and left out of the ratings.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import collect_answers
from unitune.eval.judge import Judge, read_jsonl

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


def run_arena(models: dict[str, str], questions: list[str], judge: Judge, out: Path,
              decoding, seed: int = 0, rounds: int = 200, device: str = "auto",
              log=print) -> dict:
    """Answers, judgments and the leaderboard (``leaderboard.md/.json/.png``) in ``out``."""
    from unitune.eval.ratings import leaderboard, markdown, plot

    if len(models) < 2:
        raise UserError("an arena needs at least two models (--model NAME=RUN, twice)")
    out.mkdir(parents=True, exist_ok=True)
    answers = collect_answers(models, questions, out, decoding, device, log)
    path = out / "judgments.jsonl"
    judged = {(r["index"], r["first"], r["second"]): r for r in read_jsonl(path)}
    rng = random.Random(seed)
    comparisons, unparsed = [], 0
    with path.open("a", encoding="utf-8") as f:
        for i, question in enumerate(questions):
            for first, second in itertools.combinations(models, 2):
                swap = rng.random() < 0.5  # drawn for every pair, cached or not: same order
                row = judged.get((i, first, second))
                if row is None:
                    shown_a, shown_b = (second, first) if swap else (first, second)
                    reply = judge.ask(judge_messages(question, answers[shown_a][i],
                                                     answers[shown_b][i]))
                    row = {"index": i, "first": first, "second": second, "a": shown_a,
                           "b": shown_b, "reply": reply, "verdict": parse_verdict(reply)}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                verdict = row["verdict"]
                if verdict is None:
                    unparsed += 1
                    continue
                winner = {"A": row["a"], "B": row["b"], "C": None}[verdict]
                comparisons.append((first, second, 0.5 if winner is None else
                                    float(winner == first)))
    rows = leaderboard(comparisons, rounds, seed)
    report = {"models": list(models), "prompts": len(questions),
              "comparisons": len(comparisons), "unparsed_verdicts": unparsed,
              "judge": {"url": judge.url, "model": judge.model, **judge.usage},
              "answer_lengths": {m: sum(len(a) for a in answers[m]) / len(questions)
                                 for m in models},
              "leaderboard": rows}
    (out / "leaderboard.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "leaderboard.md").write_text(markdown(rows), encoding="utf-8")
    if rows:
        plot(rows, out / "leaderboard.png")
    log(f"arena: {len(comparisons)} comparisons ({unparsed} replies without a verdict), "
        f"judge tokens {judge.usage['prompt_tokens']} in / {judge.usage['completion_tokens']} "
        f"out -> {out / 'leaderboard.md'}")
    return report
