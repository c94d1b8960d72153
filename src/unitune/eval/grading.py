"""Answers graded by an LLM judge: IMPACT-style relevance and coherence (1-5), MT-bench
single-answer grading (1-10, two turns, reference-guided for math, reasoning and coding) and the
win rate against a reference model's outputs (AlpacaEval's files; each pair judged in both
orders, so the judge's position bias cancels; both answer lengths reported, since judges
favour long answers).

Answers come from the chat engine (``eval/answers.py``); every judge reply is cached in
``grades.jsonl`` under the task's folder, so a rerun asks nothing twice; replies without a
rating are counted and left out of the means.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import (
    Answerer,
    collect_answers,
    collect_dialogues,
    read_prompts,
)
from unitune.eval.arena import judge_messages, parse_verdict
from unitune.eval.belle import evaluate_belle
from unitune.eval.judge import Grades, Judge
from unitune.jsonl import read_jsonl

DOWNLOADS = {
    "impact": "put the writing prompts there, one file per category (e.g. informative.json, "
              "professional.json, argumentative.json, creative.json; any conversation format, "
              "or .txt with one prompt per line)",
    "mt_bench": "download FastChat's mt_bench question.jsonl (fastchat/llm_judge/data/mt_bench/) "
                "and, for reference-guided grading, its reference_answer/ folder there",
    "winrate": "put a reference model's outputs there in AlpacaEval's format (a JSON list of "
               "{instruction, output, generator}, e.g. alpaca_eval_gpt4_baseline.json)",
}

_IMPACT = ("Please act as an impartial judge and rate the {aspect} of the response an AI "
           "assistant gave to the writing prompt below, on a scale of 1 to 5. {meaning} "
           "Begin with a one-sentence explanation, then give the rating strictly in this "
           "format: \"Rating: [[3]]\".")
IMPACT_ASPECTS = {
    "relevance": "Relevance: how well the response addresses the prompt and stays on its topic "
                 "(1: unrelated, 5: fully on point).",
    "coherence": "Coherence: how well organised, logical and fluent the response is (1: "
                 "incoherent, 5: clear and well structured).",
}
_MT_SINGLE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. Your evaluation should "
    "consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and "
    "level of detail of the response. Begin your evaluation by providing a short explanation. "
    "Be as objective as possible. After providing your explanation, you must rate the response "
    "on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: "
    "\"Rating: [[5]]\".\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n"
    "{answer}\n[The End of Assistant's Answer]")
_MT_REFERENCE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. Your evaluation should "
    "consider correctness and helpfulness. You will be given a reference answer and the "
    "assistant's answer. Begin your evaluation by comparing the assistant's answer with the "
    "reference answer. Identify and correct any mistakes. Be as objective as possible. After "
    "providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    "following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n"
    "{question}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference "
    "Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
_MT_SECOND = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. Your evaluation should consider "
    "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of "
    "detail of the response. You evaluation should focus on the assistant's answer to the "
    "second user question. Begin your evaluation by providing a short explanation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a "
    "scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: "
    "\"Rating: [[5]]\".")
_MT_SECOND_REFERENCE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer and the assistant's answer. You "
    "evaluation should focus on the assistant's answer to the second question. Begin your "
    "evaluation by comparing the assistant's answer with the reference answer. Identify and "
    "correct any mistakes. Be as objective as possible. After providing your explanation, you "
    "must rate the response on a scale of 1 to 10 by strictly following this format: "
    "\"[[rating]]\", for example: \"Rating: [[5]]\".")
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


def parse_rating(text: str, top: int) -> float | None:
    """The judge's ``[[n]]`` rating (else its last ``[n]``) when within 1..top."""
    found = re.findall(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", text) or \
        re.findall(r"\[\s*(\d+(?:\.\d+)?)\s*\]", text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= top else None


def _folder(data_dir: Path, task: str, pattern: str) -> list[Path]:
    files = sorted(data_dir.glob(pattern)) if data_dir.is_dir() else []
    if not files:
        raise UserError(f"{task}: no {pattern} in {data_dir}; {DOWNLOADS[task]}")
    return files


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def grade_impact(model: Answerer, data_dir: Path, judge: Judge, out: Path, decoding,
                 limit: int | None = None, log=print) -> dict:
    """IMPACT-style: every prompt of every category file answered, then rated 1-5 for
    relevance and for coherence."""
    prompts: list[tuple[str, str]] = []
    for path in _folder(data_dir, "impact", "*.*"):
        if path.suffix in (".json", ".jsonl", ".txt"):
            prompts += [(path.stem, p) for p in read_prompts(path)[:limit]]
    answers = collect_answers({"model": model}, [p for _, p in prompts], out, decoding,
                              log)["model"]
    grades = Grades(out, judge)
    ratings: dict[str, dict[str, list[float]]] = {a: {} for a in IMPACT_ASPECTS}
    unparsed = 0
    for i, ((category, prompt), answer) in enumerate(zip(prompts, answers, strict=True)):
        for aspect, meaning in IMPACT_ASPECTS.items():
            messages = [{"role": "system", "content": _IMPACT.format(aspect=aspect,
                                                                     meaning=meaning)},
                        {"role": "user", "content": f"[Prompt]\n{prompt}\n\n[The Start of "
                         f"the Response]\n{answer}\n[The End of the Response]"}]
            reply = grades.reply(f"{i}:{aspect}", messages)
            rating = parse_rating(reply, 5)
            if rating is None:
                unparsed += 1
            else:
                ratings[aspect].setdefault(category, []).append(rating)
    report: dict = {"task": "impact", "prompts": len(prompts), "unparsed": unparsed}
    for aspect, by_category in ratings.items():
        report[aspect] = _mean([v for values in by_category.values() for v in values])
    report["by_category"] = {c: {a: _mean(ratings[a].get(c, [])) for a in IMPACT_ASPECTS}
                             for c in sorted({c for c, _ in prompts})}
    report["mean_answer_chars"] = _mean([len(a) for a in answers])
    report["judge"] = judge.report()
    return report


def _mt_questions(data_dir: Path) -> tuple[list[dict], dict]:
    path = _folder(data_dir, "mt_bench", "question.jsonl")[0]
    questions = read_jsonl(path)
    for n, row in enumerate(questions, 1):
        turns = row.get("turns")
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise UserError(f"{path}: question {n}: turns: expected a list of strings")
    references = {}
    for ref in sorted((data_dir / "reference_answer").glob("*.jsonl")):
        for n, row in enumerate(read_jsonl(ref), 1):
            try:
                references.setdefault(row["question_id"], row["choices"][0]["turns"])
            except (KeyError, IndexError, TypeError):
                raise UserError(f"{ref}: answer {n}: expected FastChat's question_id and "
                                "choices[0].turns") from None
    return questions, references


def grade_mt_bench(model: Answerer, data_dir: Path, judge: Judge, out: Path, decoding,
                   limit: int | None = None, log=print) -> dict:
    """MT-bench single-answer grading: both turns answered, each rated 1-10 (the second in the
    context of the first); math, reasoning and coding against the reference when there is one."""
    questions, references = _mt_questions(data_dir)
    questions = questions[:limit]
    answers = collect_dialogues({"model": model}, [q["turns"] for q in questions], out,
                                decoding, log)["model"]
    grades = Grades(out, judge)
    scores: dict[int, list[float]] = {}
    by_category: dict[str, list[float]] = {}
    unparsed = 0
    for n, (q, turns) in enumerate(zip(questions, answers, strict=True)):
        category = q.get("category", "general")
        ref = (q.get("reference") or references.get(q.get("question_id"))) \
            if category in REFERENCE_CATEGORIES else None
        for t, answer in enumerate(turns):
            if t == 0:
                prompt = (_MT_REFERENCE.format(question=q["turns"][0], reference=ref[0],
                                               answer=answer) if ref else
                          _MT_SINGLE.format(question=q["turns"][0], answer=answer))
                messages = [{"role": "system", "content": "You are a helpful assistant."},
                            {"role": "user", "content": prompt}]
            else:  # FastChat's multi-turn prompts: the references in a block of their own
                dialogue = "".join(f"### User:\n{q['turns'][k]}\n\n### Assistant A:\n"
                                   f"{turns[k]}\n\n" for k in range(t + 1))
                content = ("<|The Start of Assistant A's Conversation with User|>\n\n"
                           + dialogue + "<|The End of Assistant A's Conversation with User|>")
                if ref and len(ref) > t:
                    refs = "".join(f"### User:\n{q['turns'][k]}\n\n### Reference answer:\n"
                                   f"{ref[k]}\n\n" for k in range(t + 1))
                    content = ("<|The Start of Reference Answer|>\n\n" + refs
                               + "<|The End of Reference Answer|>\n\n\n" + content)
                system = _MT_SECOND_REFERENCE if ref and len(ref) > t else _MT_SECOND
                messages = [{"role": "system", "content": system},
                            {"role": "user", "content": content}]
            rating = parse_rating(grades.reply(f"{q.get('question_id', n)}:{t}", messages), 10)
            if rating is None:
                unparsed += 1
                continue
            scores.setdefault(t, []).append(rating)
            by_category.setdefault(category, []).append(rating)
    every = [v for values in scores.values() for v in values]
    return {"task": "mt_bench", "questions": len(questions), "rating": _mean(every),
            **{f"turn_{t + 1}": _mean(v) for t, v in sorted(scores.items())},
            "by_category": {c: _mean(v) for c, v in sorted(by_category.items())},
            "unparsed": unparsed,
            "mean_answer_chars": _mean([len(a) for turns in answers for a in turns]),
            "judge": judge.report()}


def _reference_outputs(data_dir: Path) -> tuple[str, list[dict]]:
    path = _folder(data_dir, "winrate", "*.json")[0]
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of {{instruction, output}}")
    for n, row in enumerate(rows, 1):
        for field in ("instruction", "output"):
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise UserError(f"{path}: record {n}: {field}: missing or not a string")
    return (rows[0].get("generator") if rows else None) or path.stem, rows


def grade_winrate(model: Answerer, data_dir: Path, judge: Judge, out: Path, decoding,
                  limit: int | None = None, log=print) -> dict:
    """The model against a reference model's outputs: every pair judged in both orders
    (MT-bench's pairwise prompt); a win counts 1, a tie 0.5, averaged over the two orders."""
    reference, rows = _reference_outputs(data_dir)
    rows = rows[:limit]
    answers = collect_answers({"model": model}, [r["instruction"] for r in rows], out,
                              decoding, log)["model"]
    grades = Grades(out, judge)
    outcomes, unparsed = [], 0
    wins = losses = ties = 0
    for i, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        points = []
        for order, (a, b) in enumerate(((answer, row["output"]), (row["output"], answer))):
            verdict = parse_verdict(grades.reply(f"{i}:{order}",
                                                 judge_messages(row["instruction"], a, b)))
            if verdict is None:
                unparsed += 1
                continue
            ours = "A" if order == 0 else "B"
            points.append(0.5 if verdict == "C" else float(verdict == ours))
        if points:
            outcome = sum(points) / len(points)
            outcomes.append(outcome)
            wins, losses, ties = (wins + (outcome > 0.5), losses + (outcome < 0.5),
                                  ties + (outcome == 0.5))
    return {"task": "winrate", "reference": reference, "prompts": len(rows),
            "win_rate": _mean(outcomes), "wins": wins, "losses": losses, "ties": ties,
            "unparsed": unparsed,
            "answer_chars": {"model": _mean([len(a) for a in answers]),
                             reference: _mean([len(r["output"]) for r in rows])},
            "judge": judge.report()}


GRADED = {"belle_eval": evaluate_belle, "impact": grade_impact, "mt_bench": grade_mt_bench,
          "winrate": grade_winrate}  # (every task an LLM judge grades: suite.JUDGED)
