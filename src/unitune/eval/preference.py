"""``unitune eval TARGET --preference FILE``: how often a model prefers the chosen answer of a
preference pair.

A reward model (a ``stage=rm`` run) prefers the answer it scores higher (its pairwise accuracy,
the number reward modelling optimises); a language model prefers the answer it gives the
higher log-likelihood (the sum over the reply's tokens and end-of-turn marker, given the
prompt, as the preference stages count it). Both encode each pair as training encoded it
(``data/preference.py``'s template, special tokens and truncation; a pair that cannot fit is
left out and counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unitune.data.encode import IGNORE, Collator, encode_rows
from unitune.data.schema import PreferencePair


@dataclass
class PreferenceResult:
    scorer: str  # 'reward model' or 'log-likelihood'
    accuracy: float
    n: int
    margin: float  # mean score(chosen) - score(rejected)
    left_out: int = 0
    samples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"scorer": self.scorer, "accuracy": self.accuracy, "n": self.n,
                "mean_margin": self.margin, "left_out": self.left_out,
                "samples": self.samples}

    def table(self) -> str:
        return (f"preference accuracy ({self.scorer}): {self.accuracy:.1%} of {self.n} pairs; "
                f"mean margin {self.margin:+.4f}"
                + (f"; {self.left_out} left out (longer than max_length)"
                   if self.left_out else ""))


@torch.no_grad()
def reply_logprobs(model, tokenizer, template, convs, max_length: int,
                   batch_size: int = 8) -> list[float | None]:
    """The log-likelihood of each conversation's last reply (with its end-of-turn marker)
    given what precedes it; None where it cannot fit ``max_length``."""
    rows = encode_rows(list(convs), tokenizer, template, max_length, "last")
    out: list[float | None] = [None] * len(rows)
    todo = [i for i, r in enumerate(rows) if not r["dropped"]]
    device = next(model.parameters()).device
    collate = Collator(tokenizer.pad_token_id)
    for start in range(0, len(todo), batch_size):
        part = todo[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in part]).items()}
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = batch["labels"][:, 1:]
        picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        sums = (picked * (target != IGNORE)).sum(-1)
        for i, value in zip(part, sums.tolist(), strict=True):
            out[i] = value
    return out


SAMPLES_SHOWN = 5  # pairs whose scores the result keeps, to look at


def evaluate_preferences(target: str, pairs: list[PreferencePair], device: str = "auto",
                         template: str | None = None, trust_remote_code: bool = False,
                         max_length: int | None = None, batch_size: int = 8,
                         log=print) -> PreferenceResult:
    """The pairwise accuracy of ``target`` (a reward-model run, or any run or model).
    ``max_length``: a reward model's own; otherwise the run's (1024 for a base model)."""
    from pathlib import Path

    from unitune.run import CONFIG_YAML, is_run, open_model, read_finished, stored_config

    chosen = [p.prompt.with_reply(p.chosen) for p in pairs]
    rejected = [p.prompt.with_reply(p.rejected) for p in pairs]
    if is_run(Path(target)) and read_finished(target).kind == "rm":
        from unitune.train.rewards import RewardModel

        scorer = RewardModel(target, device, trust_remote_code, log, batch_size)
        name, scores = "reward model", scorer.score(chosen + rejected)
    else:
        model, tokenizer, tmpl = open_model(target, device=device, template=template,
                                            trust_remote_code=trust_remote_code, log=log)
        name = "log-likelihood"
        if max_length is None:
            max_length = stored_config(target)["max_length"] if is_run(Path(target)) \
                and (Path(target) / CONFIG_YAML).is_file() else 1024
        scores = reply_logprobs(model, tokenizer, tmpl, chosen + rejected, max_length,
                                batch_size)
    good, bad = scores[:len(pairs)], scores[len(pairs):]
    kept = [(p, c, r) for p, c, r in zip(pairs, good, bad, strict=True)
            if c is not None and r is not None]
    wins = [c > r for _, c, r in kept]
    samples = [{"where": p.where, "chosen": c, "rejected": r, "preferred": c > r}
               for p, c, r in kept[:SAMPLES_SHOWN]]
    return PreferenceResult(name, sum(wins) / max(1, len(wins)), len(kept),
                            sum(c - r for _, c, r in kept) / max(1, len(kept)),
                            len(pairs) - len(kept), samples)
