"""Turning conversations into token ids with a loss mask, packing them, and batching them.

Owns which tokens are trained on (``masking``: every assistant reply with its end-of-turn
marker by default, the last reply only, or everything), the truncation policy (drop the oldest
exchanges of a long conversation first, then cut the prompt from the left keeping BOS; a
reply that cannot fit is never cut: the example is dropped and counted), packing several
examples into one row with restarting position ids, and the collators.

Masking works on characters, not on separately tokenized pieces: each conversation is
rendered to one string (``Template.render`` gives the character spans of the replies), all
strings are tokenized in one parallel call of the Rust tokenizer, and the tokens from the one
covering a reply's first character to the one covering its last are trained. The ids are
therefore exactly those of tokenizing the whole text, as at inference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from unitune.data.schema import Conversation
from unitune.data.templates import Template
from unitune.errors import UserError, did_you_mean

IGNORE = -100
MASKING = ("assistant", "last", "all")


@dataclass
class EncodeReport:
    """What encoding did to a dataset: kept examples, and what was truncated or dropped."""

    kept: int = 0
    prompt_truncated: int = 0
    turns_dropped: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples_dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.kept} examples", f"{self.prompt_truncated} with the prompt truncated "
                 "from the left"]
        if self.turns_dropped:
            parts.append(f"{self.turns_dropped} with early turns dropped")
        parts += [f"{n} dropped: {reason}" for reason, n in self.dropped.items()]
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "prompt_truncated": self.prompt_truncated,
                "turns_dropped": self.turns_dropped, "dropped": dict(self.dropped),
                "first_dropped": self.examples_dropped[:10]}


def check_masking(masking: str) -> str:
    if masking not in MASKING:
        raise UserError(f"unknown masking '{masking}'{did_you_mean(masking, MASKING)}; "
                        f"choose {', '.join(MASKING)}")
    return masking


def _token_at(encoding, pos: int, end: int, step: int) -> int | None:
    """The token covering character ``pos``, looking onwards (step 1) or back (step -1) over
    characters no token covers (such as a space a tokenizer folds into the next token)."""
    while (step > 0 and pos < end) or (step < 0 and pos >= end):
        tok = encoding.char_to_token(pos)
        if tok is not None:
            return tok
        pos += step
    return None


def _labels(encoding, ids: list[int], spans: list[tuple[int, int]], masking: str) -> list[int]:
    if masking == "all":
        labels = list(ids)
        if ids:
            labels[0] = IGNORE  # the first token is never predicted
        return labels
    if masking == "last":
        spans = spans[-1:]
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        first = _token_at(encoding, s, e, 1)
        last = _token_at(encoding, e - 1, s, -1)
        if first is not None and last is not None and last >= first:
            labels[first:last + 1] = ids[first:last + 1]
    return labels


@dataclass(frozen=True)
class _Specials:
    eos_token: str
    bos_token: str


def _encode_batch(texts: list[str], tokenizer) -> list:
    """One call of the Rust tokenizer over all texts (parallel), special tokens added as the
    tokenizer adds them to a prompt at inference; no truncation or padding."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend.encode_batch(texts, add_special_tokens=True)


def encode_conversations(convs: list[Conversation], tokenizer, template: Template,
                         max_length: int, masking: str = "assistant",
                         min_prompt_tokens: int = 8) -> tuple[list[dict], EncodeReport]:
    """Token ids and labels for every conversation, in order, with a report."""
    check_masking(masking)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("unitune needs a fast (Rust) tokenizer for exact loss masking; this "
                        "model only has a slow one (convert it with transformers first)")
    # plain attributes: the tokenizer's own attribute lookup is slow in a hot loop
    specials = tokenizer if template.tokenizer_template else _Specials(
        tokenizer.eos_token or "", tokenizer.bos_token or "")
    rendered = [template.render(c, specials) for c in convs]
    encodings = _encode_batch([r[0] for r in rendered], tokenizer)
    report = EncodeReport()
    rows: list[dict] = []
    for conv, (_, spans), encoding in zip(convs, rendered, encodings, strict=True):
        if not spans and masking != "all":
            report.dropped["no assistant reply to train on"] += 1
            report.examples_dropped.append(conv.where)
            continue
        ids = encoding.ids
        labels = _labels(encoding, ids, spans, masking)
        if len(ids) > max_length:
            ids, labels = _fit(conv, ids, labels, tokenizer, template, max_length, masking,
                               min_prompt_tokens, report)
            if ids is None:
                report.examples_dropped.append(conv.where)
                continue
        rows.append({"input_ids": ids, "labels": labels})
        report.kept += 1
    return rows, report


def _fit(conv, ids, labels, tokenizer, template, max_length, masking, min_prompt, report):
    """Shorten one over-long example, or return (None, None) after counting why it was dropped."""
    turns = conv.turns
    dropped_turns = False
    # 1. drop the oldest exchanges (user ... up to the next user turn), keep the system prompt
    while len(ids) > max_length:
        nxt = next((i for i in range(1, len(turns)) if turns[i].role == "user"), None)
        if nxt is None:
            break
        turns = turns[nxt:]
        shorter = replace(conv, turns=turns)
        text, spans = template.render(shorter, tokenizer)
        (encoding,) = _encode_batch([text], tokenizer)
        ids = encoding.ids
        labels = _labels(encoding, ids, spans, masking)
        dropped_turns = True
    if len(ids) <= max_length:
        report.turns_dropped += dropped_turns
        return ids, labels
    # 2. one exchange left: keep the whole final reply, cut the prompt from the left
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE]
    first = trained[0] if trained and masking != "all" else len(ids) - (max_length - min_prompt)
    reply = len(ids) - first
    if reply + min_prompt > max_length:
        report.dropped[f"reply + end-of-turn longer than max_length - {min_prompt} prompt "
                       "tokens"] += 1
        return None, None
    head = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
    keep = max_length - head
    ids = ids[:head] + ids[len(ids) - keep:]
    labels = labels[:head] + labels[len(labels) - keep:]
    report.turns_dropped += dropped_turns
    report.prompt_truncated += 1
    return ids, labels


def encode_seq2seq(convs: list[Conversation], tokenizer, template: Template,
                   max_length: int) -> tuple[list[dict], EncodeReport]:
    """Encoder-decoder examples: the encoder reads the rendered prompt (cut from the left when
    too long), the decoder is trained on the final reply and EOS (never cut: dropped if too
    long)."""
    prompts = [template.render_prompt(c, tokenizer) for c in convs]
    inputs = tokenizer(prompts)["input_ids"]
    replies = tokenizer([c.answer for c in convs], add_special_tokens=False)["input_ids"]
    report = EncodeReport()
    rows = []
    for conv, ids, reply in zip(convs, inputs, replies, strict=True):
        labels = [*reply, tokenizer.eos_token_id]
        if len(labels) > max_length:
            report.dropped["reply + EOS longer than max_length"] += 1
            report.examples_dropped.append(conv.where)
            continue
        if len(ids) > max_length:
            ids = ids[len(ids) - max_length:]
            report.prompt_truncated += 1
        rows.append({"input_ids": ids, "labels": labels})
        report.kept += 1
    return rows, report


def pack(rows: list[dict], max_length: int) -> list[dict]:
    """Greedily concatenate examples (in order) into rows of at most ``max_length`` tokens.

    Each packed row carries ``position_ids`` that restart at 0 for every example; with no
    attention mask, transformers turns them into a block-diagonal causal mask (eager, sdpa and
    flex attention) or variable-length kernels (flash attention), so no token attends across
    examples. The first token of every example is never a target.
    """
    packed: list[dict] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []

    def flush() -> None:
        if ids:
            packed.append({"input_ids": list(ids), "labels": list(labels),
                           "position_ids": list(positions)})
            ids.clear()
            labels.clear()
            positions.clear()

    for row in rows:
        n = len(row["input_ids"])
        if ids and len(ids) + n > max_length:
            flush()
        ids.extend(row["input_ids"])
        labels.extend([IGNORE, *row["labels"][1:]])
        positions.extend(range(n))
    flush()
    return packed


class Collator:
    """Right-pads a batch. Unpacked rows get an attention mask; packed rows (with
    ``position_ids``) get position ids only, padding forming its own block."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        # labels have their own width: for an encoder-decoder they are the decoder's tokens
        label_width = max(len(ex["labels"]) for ex in batch)
        labels = torch.full((len(batch), label_width), IGNORE, dtype=torch.long)
        packed = "position_ids" in batch[0]
        extra = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :len(ex["labels"])] = torch.tensor(ex["labels"])
            if packed:
                extra[i, :n] = torch.tensor(ex["position_ids"])
                extra[i, n:] = torch.arange(width - n)
            else:
                extra[i, :n] = 1
        key = "position_ids" if packed else "attention_mask"
        return {"input_ids": ids, "labels": labels, key: extra}
