"""Turning records into token ids with a loss mask, and batching them.

Owns the rule that only response tokens (and the EOS that ends them) are trained on, the
truncation policy (the prompt is cut from the left; an answer that cannot fit is never cut,
the example is dropped and counted), and the padding collator.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from unitune.data.readers import Record
from unitune.data.templates import Template

IGNORE = -100


@dataclass
class EncodeReport:
    """What encoding did to a dataset: kept examples, and what was truncated or dropped."""

    kept: int = 0
    prompt_truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples_dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.kept} examples", f"{self.prompt_truncated} with the prompt truncated "
                 "from the left"]
        for reason, n in self.dropped.items():
            parts.append(f"{n} dropped: {reason}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "prompt_truncated": self.prompt_truncated,
                "dropped": dict(self.dropped), "first_dropped": self.examples_dropped[:10]}


def encode_records(records: list[Record], tokenizer, template: Template, max_length: int,
                   min_prompt_tokens: int = 8) -> tuple[list[dict], EncodeReport]:
    """Tokenize prompts and responses in two batched calls; mask prompts out of the loss."""
    prompts = [template.render_prompt(r.instruction, r.input) for r in records]
    prompt_ids = tokenizer(prompts)["input_ids"]  # with the tokenizer's BOS, as at inference
    response_ids = tokenizer([r.output for r in records], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    report = EncodeReport()
    examples = []
    for rec, p_ids, r_ids in zip(records, prompt_ids, response_ids, strict=True):
        r_ids = [*r_ids, eos]
        room = max_length - len(r_ids)
        if room < min_prompt_tokens:
            reason = f"answer + EOS longer than max_length - {min_prompt_tokens} prompt tokens"
            report.dropped[reason] += 1
            report.examples_dropped.append(rec.where)
            continue
        if len(p_ids) > room:
            # keep BOS (if any) and the end of the prompt, which holds the response header
            head = p_ids[:1] if p_ids and p_ids[0] == tokenizer.bos_token_id else []
            p_ids = head + p_ids[len(p_ids) - (room - len(head)):]
            report.prompt_truncated += 1
        examples.append({"input_ids": p_ids + r_ids,
                         "labels": [IGNORE] * len(p_ids) + r_ids})
        report.kept += 1
    return examples, report


class Collator:
    """Right-pads a batch; padded positions get attention 0 and label -100."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :n] = torch.tensor(ex["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
