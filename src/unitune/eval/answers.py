"""Models' answers to prompts and multi-turn dialogues through the chat engine, kept in a
JSON-lines cache (``answers.jsonl``) so a rerun asks nothing twice: what the arena, the judged
benchmarks and the win rate grade; the ``Answerer`` (a model opened once, on first use, for
every task that needs it); and the prompt files they read."""

from __future__ import annotations

import json
from pathlib import Path

from unitune.eval.judge import cache_key
from unitune.jsonl import read_jsonl


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: each line of a .txt, else the first user turn of each record
    (a conversation, a prompt alone or a preference pair, in any format the readers know)."""
    from unitune.data.readers import iter_records
    from unitune.data.schema import PlainText, conversation_of

    prompts = []
    for record in iter_records(path):
        if isinstance(record, PlainText):
            prompts.append(record.text.strip())
        else:
            conv = conversation_of(record)
            prompts.append(conv.turns[0].user_text())
    return prompts


class Answerer:
    """A model that answers: a run or a base model (``target``) and the chat engine's
    settings (template, trust_remote_code, rope_scaling, static_cache). Its engine opens on
    first use, so answers that are all cached load nothing. ``keep_open``: the engine stays
    open for the next task (every task of one evaluation shares one load) until ``close``;
    otherwise it closes once its answers are in (an arena holds one model at a time)."""

    def __init__(self, target: str, device: str = "auto", log=print, keep_open: bool = False,
                 **settings):
        self.target, self.device, self.log, self.keep_open = target, device, log, keep_open
        self.settings = settings
        self._engine = None

    def identity(self, decoding) -> list:
        """Everything an answer depends on besides the question: the model (``run.identity``:
        a run retrained in place is asked again), the decoding and the engine settings that
        change what it says (not ``static_cache``, which changes only how fast)."""
        from dataclasses import asdict

        from unitune.run import identity

        settings = {k: v for k, v in sorted(self.settings.items())
                    if v is not None and k != "static_cache"}
        return [identity(self.target), asdict(decoding), settings]

    def engine(self):
        """The chat engine serving the model, opened on the first call."""
        if self._engine is None:
            from unitune.infer.engine import Engine

            self._engine = Engine(self.target, device=self.device, log=self.log,
                                  max_queue=1 << 30,  # (every question is asked at once)
                                  **self.settings)
        return self._engine

    @property
    def served(self) -> str:
        """The id the engine serves the model under (the run's adapter, or the model)."""
        engine = self.engine()
        return engine.adapters[0] if engine.adapters else engine.base_id

    def done(self) -> None:
        """A task's answers are in: close the engine unless it is kept for the next."""
        if not self.keep_open:
            self.close()

    def close(self) -> None:
        """Close the engine and free its model (the next model loads into that memory)."""
        if self._engine is not None:
            import gc

            import torch

            self._engine.close()
            self._engine = None
            gc.collect()  # (the engine and its worker thread refer to each other)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def answer_key(identity: list, turns: list[str]) -> str:
    """The cache key of an answer: who answered how (``Answerer.identity``) and the user
    turns up to this one."""
    return cache_key([identity, turns])


def collect_dialogues(models: dict[str, Answerer], dialogues: list[list[str]], out: Path,
                      decoding, log=print) -> dict[str, list[list[str]]]:
    """Every model's answer to every user turn of every dialogue, each turn asked after the
    model's own earlier answers (MT-bench's second turns); cached by model and dialogue, so
    a changed prompt file, another model, a retrained run or other decoding or engine
    settings are never answered from the cache."""
    from unitune.infer.engine import Request

    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    cached = {row["key"]: row["answer"] for row in read_jsonl(path, appended=True)
              if "key" in row}
    answers: dict[str, dict[tuple[int, int], str]] = {}
    with path.open("a", encoding="utf-8") as f:
        for name, answerer in models.items():
            have = answers.setdefault(name, {})
            identity = answerer.identity(decoding)
            for i, turns in enumerate(dialogues):
                for t in range(len(turns)):
                    key = answer_key(identity, turns[:t + 1])
                    if key in cached:
                        have[i, t] = cached[key]
            missing = [i for i, turns in enumerate(dialogues)
                       if any((i, t) not in have for t in range(len(turns)))]
            if not missing:
                continue
            log(f"{name} answers {len(missing)} prompts")
            running, model = answerer.engine(), answerer.served
            try:
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
                                            "key": answer_key(identity,
                                                              dialogues[i][:turn + 1]),
                                            "answer": have[i, turn]}, ensure_ascii=False)
                                + "\n")
                        f.flush()
            finally:
                del running  # (so that an arena never holds two models at once)
                answerer.done()
    return {name: [[answers[name][i, t] for t in range(len(turns))]
                   for i, turns in enumerate(dialogues)] for name in models}


def collect_answers(models: dict[str, Answerer], questions: list[str], out: Path, decoding,
                    log=print) -> dict[str, list[str]]:
    """Every model's answer to every single-turn question."""
    answers = collect_dialogues(models, [[q] for q in questions], out, decoding, log)
    return {name: [turns[0] for turns in rows] for name, rows in answers.items()}
