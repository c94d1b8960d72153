"""Perplexity of a model on reference data: exp of the mean token negative log-likelihood.

Plain text is scored on every token, long texts in windows (``stride`` new tokens each);
conversations are scored on their assistant replies only, given the prompt rendered with the
run's template (the tokens a chat model is trained to predict).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from unitune.errors import UserError


def read_reference(path: str) -> list:
    """Plain texts (.txt lines, ``{"text"}`` records) and/or conversations of a data file."""
    from unitune.data.readers import read_records
    from unitune.data.schema import Conversation, PlainText

    if not Path(path).exists():
        raise UserError(f"reference data not found: {path}")
    records = [r for r in read_records(path) if isinstance(r, PlainText | Conversation)]
    if not records:
        raise UserError(f"{path}: no text or conversations to score")
    return records


@torch.inference_mode()
def perplexity(model, tokenizer, records: list, template=None, max_length: int = 512,
               stride: int = 512) -> float:
    from unitune.data.encode import IGNORE, encode_conversations
    from unitune.data.schema import Conversation

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    convs = [r for r in records if isinstance(r, Conversation)]
    if convs:
        if template is None:
            raise UserError("scoring conversations needs the run's template")
        rows, _ = encode_conversations(convs, tokenizer, template, max_length)
        for row in rows:
            labels = torch.tensor([row["labels"]], device=device)
            n = int((labels[:, 1:] != IGNORE).sum())
            loss = model(input_ids=torch.tensor([row["input_ids"]], device=device),
                         labels=labels).loss
            nll += float(loss) * n
            count += n
    for text in (r.text for r in records if not isinstance(r, Conversation)):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        prev_end = 0
        for begin in range(0, max(1, len(ids) - 1), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end].unsqueeze(0).to(device)
            labels = window.clone()
            labels[:, : prev_end - begin] = IGNORE  # score only tokens new to this window
            n = int((labels[:, 1:] != IGNORE).sum())
            if n:
                loss = model(input_ids=window, labels=labels).loss
                nll += float(loss) * n
                count += n
            prev_end = end
            if end == len(ids):
                break
    if not count:
        raise UserError("the reference text is too short to score")
    return math.exp(nll / count)
