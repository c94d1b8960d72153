"""Perplexity of a model on reference text: exp of the mean token negative log-likelihood,
with long texts scored in windows (``stride`` tokens of new context per window)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from unitune.errors import UserError


def read_texts(path: str) -> list[str]:
    """Texts of a .txt file (one per non-empty line) or of any data file the readers take."""
    from unitune.data.readers import read_records
    from unitune.data.schema import Conversation, PlainText

    if not Path(path).exists():
        raise UserError(f"reference text not found: {path}")
    texts = []
    for rec in read_records(path):
        if isinstance(rec, PlainText):
            texts.append(rec.text)
        elif isinstance(rec, Conversation):
            texts.append(rec.answer)
    if not texts:
        raise UserError(f"{path}: no text to score")
    return texts


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 512,
               stride: int = 512) -> float:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        prev_end = 0
        for begin in range(0, max(1, len(ids) - 1), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end].unsqueeze(0).to(device)
            labels = window.clone()
            labels[:, : prev_end - begin] = -100  # score only tokens new to this window
            n = int((labels[:, 1:] != -100).sum())
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
