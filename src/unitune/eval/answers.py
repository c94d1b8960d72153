"""Models' answers to prompts and multi-turn dialogues through the chat engine, kept in a
JSON-lines cache (``answers.jsonl``) so a rerun asks nothing twice: what the arena, the judged
benchmarks and the win rate grade; and the prompt files they read."""

from __future__ import annotations

import json
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.judge import read_jsonl


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: one per line of a .txt, else the first user turn of each
    conversation (any format the data readers know)."""
    from unitune.data.readers import read_conversations

    path = Path(path)
    if path.suffix == ".txt":
        if not path.exists():
            raise UserError(f"{path}: no such file")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    return [c.turns[0].user_text() for c in read_conversations(str(path))]


def collect_dialogues(models: dict[str, str], dialogues: list[list[str]], out: Path, decoding,
                      device: str = "auto", log=print) -> dict[str, list[list[str]]]:
    """Every model's answer to every user turn of every dialogue, each turn asked after the
    model's own earlier answers (MT-bench's second turns); cached per (model, dialogue, turn)."""
    from unitune.infer.engine import Engine, Request

    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    cached: dict[str, dict[tuple[int, int], str]] = {}
    for row in read_jsonl(path):
        cached.setdefault(row["model"], {})[row["index"], row.get("turn", 0)] = row["answer"]
    with path.open("a", encoding="utf-8") as f:
        for name, target in models.items():
            have = cached.setdefault(name, {})
            missing = [i for i, turns in enumerate(dialogues)
                       if any((i, t) not in have for t in range(len(turns)))]
            if not missing:
                continue
            log(f"{name} answers {len(missing)} prompts")
            with Engine(target, device=device, log=log) as engine:
                model = engine.adapters[0] if engine.adapters else engine.base_id
                for turn in range(max(len(dialogues[i]) for i in missing)):
                    jobs = {}
                    for i in missing:
                        if turn >= len(dialogues[i]) or (i, turn) in have:
                            continue
                        messages = []
                        for t in range(turn + 1):
                            messages.append({"role": "user", "content": dialogues[i][t]})
                            if t < turn:
                                messages.append({"role": "assistant", "content": have[i, t]})
                        jobs[i] = engine.submit(Request(model, engine.render_chat(
                            model, messages), decoding))
                    for i, job in jobs.items():
                        have[i, turn] = job.result().seqs[0].text.strip()
                        f.write(json.dumps({"model": name, "index": i, "turn": turn,
                                            "answer": have[i, turn]}, ensure_ascii=False)
                                + "\n")
                        f.flush()
    return {name: [[cached[name][i, t] for t in range(len(turns))]
                   for i, turns in enumerate(dialogues)] for name in models}


def collect_answers(models: dict[str, str], questions: list[str], out: Path, decoding,
                    device: str = "auto", log=print) -> dict[str, list[str]]:
    """Every model's answer to every single-turn question."""
    answers = collect_dialogues(models, [[q] for q in questions], out, decoding, device, log)
    return {name: [turns[0] for turns in rows] for name, rows in answers.items()}
