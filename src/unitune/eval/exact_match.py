"""Exact-match accuracy of generated answers against reference outputs, overall and per family.

Records that carry a ``family`` (the synthetic suite does) are scored on that family's final
answer (for chain-of-thought families, the result after "the answer is"); others compare the
whole stripped output, or, with ``match='number'``, the final numbers (GSM8K-style math: the
reference's after its ``####``; a reference without a number is compared whole).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from unitune.data.schema import Conversation
from unitune.data.synth import FAMILIES, final_answer
from unitune.data.templates import Template
from unitune.errors import UserError
from unitune.infer.generate import Decoding, answer


@dataclass
class ExactMatch:
    accuracy: float
    n: int
    per_family: dict[str, float] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    mean_reward: float | None = None  # a reward model's mean score of the answers
    match: str = "exact"  # what was compared: whole answers or final numbers

    def as_dict(self) -> dict:
        return {"exact_match": self.accuracy, "match": self.match, "n": self.n,
                "per_family": self.per_family, "samples": self.samples,
                **({"mean_reward": self.mean_reward} if self.mean_reward is not None else {})}

    def table(self) -> str:
        lines = [f"{'family':<14}{self.match + ' match':>12}"]
        lines += [f"{fam:<14}{acc:>11.1%}" for fam, acc in sorted(self.per_family.items())]
        lines.append(f"{'overall':<14}{self.accuracy:>11.1%}  (n={self.n})")
        if self.mean_reward is not None:
            lines.append(f"{'mean reward':<14}{self.mean_reward:>12.4f}")
        return "\n".join(lines)


def _family(rec: Conversation) -> str:
    fam = rec.meta.get("family")
    return fam if fam in FAMILIES else "all"


def score(record: Conversation, prediction: str, match: str = "exact") -> bool:
    fam = _family(record)
    if fam != "all":
        return final_answer(fam, prediction) == final_answer(fam, record.answer)
    if match == "number":
        from unitune.train.rewards import final_number

        if (reference := final_number(record.answer)) is not None:
            return final_number(prediction) == reference
    return prediction.strip() == record.answer.strip()


def evaluate_exact_match(model, tokenizer, template: Template, records: list[Conversation],
                         max_new_tokens: int = 64, batch_size: int = 64,
                         keep_samples: int = 5, reward=None,
                         match: str = "exact") -> ExactMatch:
    """Greedy answers scored against the references (``match``: whole answers, or final
    numbers); ``reward`` (a function of the answered conversations, such as a reward
    model's ``score``) also gives their mean reward."""
    preds = answer(model, tokenizer, template, records, Decoding(max_new_tokens=max_new_tokens),
                   batch_size=batch_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    samples = []
    for rec, pred in zip(records, preds, strict=True):
        ok = score(rec, pred, match)
        hits[_family(rec)].append(ok)
        if len(samples) < keep_samples:
            samples.append({"prompt": rec.turns[-2].user_text() if len(rec.turns) > 1 else "",
                            "reference": rec.answer, "prediction": pred, "correct": ok})
    total = [h for v in hits.values() for h in v]
    per_family = {fam: sum(v) / len(v) for fam, v in hits.items()}
    mean_reward = None
    if reward is not None:
        scores = [s for s in reward([r.prompt().with_reply(p) for r, p in
                                     zip(records, preds, strict=True)]) if s is not None]
        mean_reward = sum(scores) / max(1, len(scores))
    return ExactMatch(sum(total) / max(1, len(total)), len(total), per_family, samples,
                      mean_reward, match)


def evaluate_file(target: str, path: str, max_new_tokens: int = 64, batch_size: int = 64,
                  match: str = "exact", reward_run: str | None = None, device: str = "auto",
                  template: str | None = None, trust_remote_code: bool = False,
                  rope_scaling: dict | None = None, log=print) -> ExactMatch:
    """``unitune eval --data FILE``: ``target`` (a run or a base model) answers the file's
    records, scored by ``match``; ``reward_run`` (a reward-model run) also scores the
    answers."""
    from unitune.data.readers import read_conversations
    from unitune.run import open_model, read_finished

    records = read_conversations(path)
    reward = None
    if reward_run:
        from unitune.train.rewards import RewardModel

        if read_finished(reward_run).kind != "rm":  # (before any weights load)
            raise UserError(f"--reward {reward_run}: not a reward model (a stage=rm run)")
        reward = RewardModel(reward_run, device, trust_remote_code, log)
    model, tokenizer, tmpl = open_model(target, device=device, template=template,
                                        trust_remote_code=trust_remote_code, log=log,
                                        rope_scaling=rope_scaling)
    return evaluate_exact_match(model, tokenizer, tmpl, records, max_new_tokens, batch_size,
                                reward=reward.score if reward else None, match=match)


def write_report(result: ExactMatch, path: Path) -> None:
    path.write_text(json.dumps(result.as_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
