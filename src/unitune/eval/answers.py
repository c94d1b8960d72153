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


def answerer(target: str, decoding, engine: dict) -> list:
    """Everything an answer depends on besides the question: the model (a run by its path
    and when it was trained, so a run retrained in place is asked again), the decoding and
    the engine's settings (template, RoPE scaling, ...)."""
    from dataclasses import asdict

    from unitune.run import is_run, read_run

    model: list = [target]
    if Path(target).exists():
        model = [str(Path(target).resolve())]
        if is_run(Path(target)):
            record = read_run(target)
            model += [record.started, record.ended]
    return [model, asdict(decoding), {k: engine[k] for k in sorted(engine)}]


def answer_key(answered_by: list, turns: list[str]) -> str:
    """The cache key of an answer: who answered how (``answerer``) and the user turns up to
    this one."""
    import hashlib

    return hashlib.sha256(json.dumps([answered_by, turns], default=str).encode()
                          ).hexdigest()[:20]


def collect_dialogues(models: dict[str, str], dialogues: list[list[str]], out: Path, decoding,
                      device: str = "auto", log=print, **engine) -> dict[str, list[list[str]]]:
    """Every model's answer to every user turn of every dialogue, each turn asked after the
    model's own earlier answers (MT-bench's second turns); cached by model and dialogue, so
    a changed prompt file, another model, a retrained run or other decoding or engine
    settings are never answered from the cache. ``engine``: more ``Engine`` settings
    (template, trust_remote_code, rope_scaling)."""
    from unitune.infer.engine import Engine, Request

    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    cached = {row["key"]: row["answer"] for row in read_jsonl(path) if "key" in row}
    answers: dict[str, dict[tuple[int, int], str]] = {}
    with path.open("a", encoding="utf-8") as f:
        for name, target in models.items():
            have = answers.setdefault(name, {})
            answered_by = answerer(target, decoding, engine)
            for i, turns in enumerate(dialogues):
                for t in range(len(turns)):
                    key = answer_key(answered_by, turns[:t + 1])
                    if key in cached:
                        have[i, t] = cached[key]
            missing = [i for i, turns in enumerate(dialogues)
                       if any((i, t) not in have for t in range(len(turns)))]
            if not missing:
                continue
            log(f"{name} answers {len(missing)} prompts")
            with Engine(target, device=device, log=log, **engine) as running:
                model = running.adapters[0] if running.adapters else running.base_id
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
                        jobs[i] = running.submit(Request(model, running.render_chat(
                            model, messages), decoding))
                    for i, job in jobs.items():
                        have[i, turn] = job.result().seqs[0].text.strip()
                        f.write(json.dumps({"model": name, "index": i, "turn": turn,
                                            "key": answer_key(answered_by,
                                                          dialogues[i][:turn + 1]),
                                            "answer": have[i, turn]}, ensure_ascii=False)
                                + "\n")
                        f.flush()
    return {name: [[answers[name][i, t] for t in range(len(turns))]
                   for i, turns in enumerate(dialogues)] for name in models}


def collect_answers(models: dict[str, str], questions: list[str], out: Path, decoding,
                    device: str = "auto", log=print, **engine) -> dict[str, list[str]]:
    """Every model's answer to every single-turn question."""
    answers = collect_dialogues(models, [[q] for q in questions], out, decoding, device, log,
                                **engine)
    return {name: [turns[0] for turns in rows] for name, rows in answers.items()}
