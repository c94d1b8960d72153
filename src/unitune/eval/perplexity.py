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


def reference_windows(records: list, tokenizer, template=None, max_length: int = 512,
                      stride: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (input ids, labels) windows that perplexity scores, tokenized once for any number
    of models (a λ sweep scores the same windows with every λ)."""
    from unitune.data.encode import IGNORE, encode_conversations
    from unitune.data.schema import Conversation

    windows = []
    convs = [r for r in records if isinstance(r, Conversation)]
    if convs:
        if template is None:
            raise UserError("scoring conversations needs the run's template")
        rows, _ = encode_conversations(convs, tokenizer, template, max_length)
        windows += [(torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]]))
                    for row in rows]
    for text in (r.text for r in records if not isinstance(r, Conversation)):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        prev_end = 0
        for begin in range(0, max(1, len(ids) - 1), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end].unsqueeze(0)
            labels = window.clone()
            labels[:, : prev_end - begin] = IGNORE  # score only tokens new to this window
            windows.append((window, labels))
            prev_end = end
            if end == len(ids):
                break
    windows = [(ids, labels) for ids, labels in windows if (labels[:, 1:] != IGNORE).any()]
    if not windows:
        raise UserError("the reference text is too short to score")
    return windows


@torch.inference_mode()
def perplexity(model, windows: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """exp of the mean negative log-likelihood of every scored token of ``windows``."""
    from unitune.data.encode import IGNORE

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for ids, labels in windows:
        n = int((labels[:, 1:] != IGNORE).sum())
        loss = model(input_ids=ids.to(device), labels=labels.to(device)).loss
        nll += float(loss) * n
        count += n
    return math.exp(nll / count)


def evaluate_perplexity(target: str, path: str, window: int = 512, stride: int = 512,
                        device: str = "auto", template: str | None = None,
                        trust_remote_code: bool = False, rope: str | None = None,
                        log=print) -> dict:
    """``unitune eval --perplexity``: the perplexity of ``target`` (a run or a base model) on
    the reference file ``path``, in windows of ``window`` tokens that move by ``stride``;
    ``rope``: a RoPE scaling as ``TYPE:FACTOR`` (instead of a run's own)."""
    from unitune.models.rope import context_length, parse
    from unitune.run import open_model

    if not 0 < stride <= window:
        raise UserError(f"--stride must be in 1..--window ({window}), got {stride}")
    records = read_reference(path)
    model, tokenizer, tmpl = open_model(target, device=device, template=template,
                                        trust_remote_code=trust_remote_code, log=log,
                                        rope_scaling=parse(rope))
    windows = reference_windows(records, tokenizer, tmpl, window, stride)
    positions = context_length(model.config)  # (a run's or the given scaling included)
    longest = max((ids.shape[1] for ids, _ in windows), default=0)
    if positions and longest > positions:
        log(f"warning: windows of {longest} tokens run past the {positions} positions "
            f"{target} takes; lower --window to {positions} or stretch the positions with "
            "--rope")
    return {"model": target, "file": path, "window": window, "stride": stride,
            "rope": rope, "windows": len(windows),
            "perplexity": perplexity(model, windows)}
