"""Belle-Eval (Alpaca-CoT's Chinese evaluation): a strong LLM grades each answer against the
reference with the grading prompt of its category, on a 0-1 scale.

Reads ``eval_set*.json`` (JSON lines: ``question``, ``std_answer``, ``class``) and
``eval_prompt.json`` (one grading prompt per ``class``) from a local directory, as BELLE
publishes them; the model answers every question through the chat engine; the judge (any
OpenAI-compatible endpoint) gets the category's prompt as its instructions and the question,
the reference and the model's answer; the score is read from its ``得分:`` line. Answers and
grades are cached, so a rerun continues; replies with no score are counted and left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import Answerer, collect_answers
from unitune.eval.judge import Grades, Judge
from unitune.jsonl import read_jsonl

DOWNLOAD = ("download eval_set.json and eval_prompt.json from BELLE's eval folder "
            "(github.com/LianjiaTech/BELLE/tree/main/eval) into it")


def _category(name: str) -> str:
    return " ".join(name.replace("\xa0", " ").lower().split())


def read_belle(data_dir: str | Path) -> tuple[list[dict], dict[str, str]]:
    """(the questions, the grading prompt of each category)."""
    folder = Path(data_dir)
    sets = sorted(folder.glob("eval_set*.json")) if folder.is_dir() else []
    prompt_file = folder / "eval_prompt.json"
    if not sets or not prompt_file.exists():
        raise UserError(f"Belle-Eval: no eval_set*.json and eval_prompt.json in {folder}; "
                        f"{DOWNLOAD}")
    prompts = {_category(r["class"]): r["prompt"]
               for r in read_jsonl(prompt_file, ("class", "prompt"))}
    items = read_jsonl(sets[0], ("question", "std_answer", "class"))
    for n, item in enumerate(items, 1):
        if _category(item["class"]) not in prompts:
            raise UserError(f"{sets[0]}:{n}: class {item['class']!r} has no grading prompt in "
                            f"{prompt_file}")
    return items, prompts


def grading_messages(prompt: str, item: dict, answer: str) -> list[dict]:
    return [{"role": "system", "content": prompt},
            {"role": "user", "content": f"问题：{item['question']}\n\n标准回答："
                                        f"{item['std_answer']}\n\n模型回答：{answer}"}]


def parse_score(text: str) -> float | None:
    """The score of a ``得分: 0.8`` line (the last one), clamped to 0-1; None without one."""
    found = re.findall(r"得分\s*[:：]\s*([01](?:\.\d+)?|\.\d+)", text)
    return min(1.0, max(0.0, float(found[-1]))) if found else None


def evaluate_belle(model: Answerer, data_dir: str | Path, judge: Judge, out: Path, decoding,
                   limit: int | None = None, log=print) -> dict:
    items, prompts = read_belle(data_dir)
    items = items[:limit]
    answers = collect_answers({"model": model}, [i["question"] for i in items], out,
                              decoding, log)["model"]
    grades = Grades(out, judge)
    graded = []
    for index, (item, answer) in enumerate(zip(items, answers, strict=True)):
        reply = grades.reply(str(index), grading_messages(prompts[_category(item["class"])],
                                                          item, answer))
        graded.append({"class": _category(item["class"]), "score": parse_score(reply)})
    scored = [row for row in graded if row["score"] is not None]
    by_class: dict[str, list[float]] = {}
    for row in scored:
        by_class.setdefault(row["class"], []).append(row["score"])
    report = {"task": "belle_eval", "questions": len(items), "graded": len(scored),
              "unparsed": len(items) - len(scored),
              "score": sum(r["score"] for r in scored) / len(scored) if scored else None,
              "by_class": {c: sum(v) / len(v) for c, v in sorted(by_class.items())},
              "mean_answer_chars": sum(map(len, answers)) / max(1, len(answers)),
              "judge": judge.report()}
    (out / "belle_eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False),
                                         encoding="utf-8")
    return report
