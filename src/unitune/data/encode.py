"""Turning conversations into token ids with a loss mask, packing them, and batching them.

Owns which tokens are trained on (``masking``: every assistant reply with its end-of-turn
marker by default, the last reply only, or everything), the truncation policy (drop the oldest
exchanges of a long conversation first, then cut the prompt from the left keeping BOS; a
reply that cannot fit is never cut: the example is dropped and counted), packing several
examples into one row with restarting position ids, and the collator. Small lists are encoded
in memory (``encode_conversations``), training sets of any size as Arrow tables written and
read by ``datasets`` (``encode_records``).

Masking works on characters, not on separately tokenized pieces: each conversation is
rendered to one string (``Template.render`` gives the character spans of the replies), all
strings are tokenized in one parallel call of the Rust tokenizer, and the tokens from the one
covering a reply's first character to the one covering its last are trained. The ids are
therefore exactly those of tokenizing the whole text, as at inference.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from unitune.data.schema import Conversation
from unitune.data.store import Records, from_row, rows_of
from unitune.data.templates import SpanError, Template, added_prefix
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
    # every example's length in tokens before any fitting, in order (for `unitune data stats`)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False,
                                compare=False)

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


def check_masking(masking: str) -> None:
    if masking not in MASKING:
        raise UserError(f"unknown masking '{masking}'{did_you_mean(masking, MASKING)}; "
                        f"choose {', '.join(MASKING)}")


class _FastTokens:
    """The ids of one text from the Rust tokenizer (after the special tokens it opens with),
    and which tokens cover a character span (its offsets, exactly)."""

    def __init__(self, encoding, prefix: list[int]):
        self.encoding, self.shift = encoding, len(prefix)
        self.ids = prefix + encoding.ids

    def _token_at(self, pos: int, end: int, step: int) -> int | None:
        """The token covering character ``pos``, looking onwards (step 1) or back (step -1)
        over characters no token covers (such as a space folded into the next token)."""
        while (step > 0 and pos < end) or (step < 0 and pos >= end):
            tok = self.encoding.char_to_token(pos)
            if tok is not None:
                return tok
            pos += step
        return None

    def token_range(self, start: int, end: int) -> tuple[int, int] | None:
        first, last = self._token_at(start, end, 1), self._token_at(end - 1, start, -1)
        if first is None or last is None or last < first:
            return None
        return first + self.shift, last + 1 + self.shift


class _SlowTokens:
    """The ids of one text from a slow (Python, e.g. SentencePiece or remote-code)
    tokenizer. With no offsets, the tokens of a span are found by tokenising the text up to
    its start and its end: a boundary the tokenizer merges across is inside one token, which
    is then trained, as the offsets of a fast tokenizer would say."""

    def __init__(self, text: str, tokenizer, prefix: list[int]):
        self.text, self.tokenizer, self.shift = text, tokenizer, len(prefix)
        self.bare = self._ids(text)
        self.ids = prefix + self.bare

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _boundary(self, pos: int) -> tuple[int, bool]:
        """(how many of the text's tokens lie wholly before character ``pos``, whether the
        next one starts exactly there)."""
        head = self._ids(self.text[:pos])
        common = common_prefix(head, self.bare)
        return common, common == len(head)

    def token_range(self, start: int, end: int) -> tuple[int, int] | None:
        first, _ = self._boundary(start)
        last, exact = self._boundary(end)
        last = last if exact else last + 1  # (the token the boundary falls in is trained)
        return (first + self.shift, last + self.shift) if last > first else None


def common_prefix(a, b) -> int:
    """How many leading items two sequences share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _labels(tokens, spans: list[tuple[int, int]], masking: str) -> tuple[list[int], bool]:
    """(labels, whether every span was located in the tokens)."""
    ids = tokens.ids
    if masking == "all":
        labels = list(ids)
        if ids:
            labels[0] = IGNORE  # the first token is never predicted
        return labels, True
    if masking == "last":
        spans = spans[-1:]
    labels, located = [IGNORE] * len(ids), True
    for s, e in spans:
        found = tokens.token_range(s, e)
        if found is None:
            located = False
        else:
            labels[found[0]:found[1]] = ids[found[0]:found[1]]
    return labels, located


@dataclass(frozen=True)
class _Specials:
    eos_token: str
    bos_token: str


@dataclass(frozen=True)
class _Setup:
    """What encoding needs of a tokenizer and template, worked out once per batch: the special
    tokens the tokenizer opens a text with where the template leaves them to it (BOS,
    ChatGLM's ``[gMASK]sop``; never one it would append, such as an EOS: the template ends
    each reply itself), how many tokens open every row before any text (those, and the
    template's own prefix), which truncation keeps, and the special token ids."""

    prefix: list[int]
    opening: int
    special: frozenset

    @classmethod
    def of(cls, tokenizer, template: Template) -> _Setup:
        prefix = added_prefix(tokenizer) if template.add_special_tokens else []
        own = template.prefix.format(eos=tokenizer.eos_token or "",
                                     bos=tokenizer.bos_token or "")
        opening = len(prefix) + (len(tokenizer(own, add_special_tokens=False)["input_ids"])
                                 if own else 0)
        return cls(prefix, opening, frozenset(tokenizer.all_special_ids))


def _tokenize(texts: list[str], tokenizer, prefix: list[int]) -> list:
    """The tokens of every text, after ``prefix`` (``_Setup.prefix``): a fast tokenizer's one
    parallel Rust call (no truncation or padding), a slow one's text by text; exactly as at
    inference."""
    if not getattr(tokenizer, "is_fast", False):
        return [_SlowTokens(t, tokenizer, prefix) for t in texts]
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return [_FastTokens(e, prefix) for e in backend.encode_batch(texts,
                                                                 add_special_tokens=False)]


def tokenize_ids(texts: list[str], tokenizer, add_special_tokens: bool) -> list[list[int]]:
    """The token ids of texts exactly as training tokenises a decoder's text (see
    ``_tokenize``): what generation feeds a decoder-only model."""
    prefix = added_prefix(tokenizer) if add_special_tokens else []
    return [tokens.ids for tokens in _tokenize(texts, tokenizer, prefix)]


def encoder_ids(prompts: list[str], tokenizer, add_special_tokens: bool) -> list[list[int]]:
    """An encoder-decoder's prompts, tokenised with every special token the tokenizer adds
    (T5 closes its encoder input with ``</s>``), in training and at generation alike."""
    return tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]


def _render(template: Template, conv: Conversation, tokenizer):
    """(text, spans, why it cannot be trained or "")."""
    try:
        text, spans = template.render(conv, tokenizer)
    except SpanError as exc:
        return "", [], f"reply not located: {exc}"
    return text, spans, ""


def _leading_specials(ids: list[int], setup: _Setup) -> int:
    """How many tokens open the row before any text (``setup.opening``, and special tokens
    written first); truncating the prompt keeps them."""
    n = 0
    while n < len(ids) and (n < setup.opening or ids[n] in setup.special):
        n += 1
    return n


_MIN_PROMPT = 8  # prompt tokens an over-long example keeps in front of its reply


def encode_rows(convs: Sequence[Conversation], tokenizer, template: Template, max_length: int,
            masking: str) -> list[dict]:
    """One row per conversation: ``input_ids``, ``labels`` and what fitting it did
    (``prompt_truncated``, ``turns_dropped``, and ``dropped``: why it was left out, or "")."""
    # plain attributes: the tokenizer's own attribute lookup is slow in a hot loop
    specials = tokenizer if template.tokenizer_template else _Specials(
        tokenizer.eos_token or "", tokenizer.bos_token or "")
    rendered = [_render(template, c, specials) for c in convs]
    setup = _Setup.of(tokenizer, template)
    all_tokens = _tokenize([r[0] for r in rendered], tokenizer, setup.prefix)
    rows: list[dict] = []
    for conv, (_, spans, why), tokens in zip(convs, rendered, all_tokens, strict=True):
        row = {"input_ids": [], "labels": [], "dropped": why, "prompt_truncated": False,
               "turns_dropped": False, "tokens": len(tokens.ids)}
        rows.append(row)
        if why:
            continue
        if not spans and masking != "all":
            row["dropped"] = "no assistant reply to train on"
            continue
        labels, located = _labels(tokens, spans, masking)
        if not located or all(label == IGNORE for label in labels):
            row["dropped"] = "a reply trains no token (its span holds none)"
            continue
        if len(tokens.ids) > max_length:
            _fit(conv, tokens.ids, labels, tokenizer, template, setup, max_length, masking, row)
        else:
            row["input_ids"], row["labels"] = tokens.ids, labels
    return rows


def _fit(conv, ids, labels, tokenizer, template, setup, max_length, masking, row) -> None:
    """Shorten one over-long example into ``row``, or say in ``row`` why it was dropped."""
    turns = conv.turns
    # 1. drop the oldest exchanges (user ... up to the next user turn), keep the system prompt
    while len(ids) > max_length:
        nxt = next((i for i in range(1, len(turns)) if turns[i].role == "user"), None)
        if nxt is None:
            break
        turns = turns[nxt:]
        shorter = replace(conv, turns=turns)
        text, spans, why = _render(template, shorter, tokenizer)
        if why:
            row.update(dropped=why, turns_dropped=False)
            return
        (tokens,) = _tokenize([text], tokenizer, setup.prefix)
        ids, (labels, _) = tokens.ids, _labels(tokens, spans, masking)
        row["turns_dropped"] = True
    if len(ids) > max_length:
        # 2. one exchange left: keep the whole final reply, cut the prompt from the left
        trained = [i for i, lab in enumerate(labels) if lab != IGNORE]
        first = trained[0] if trained and masking != "all" else \
            len(ids) - (max_length - _MIN_PROMPT)
        if len(ids) - first + _MIN_PROMPT > max_length:
            row["dropped"] = (f"reply + end-of-turn longer than max_length - {_MIN_PROMPT} "
                              "prompt tokens")
            row["turns_dropped"] = False
            return
        head = _leading_specials(ids, setup)
        keep = max_length - head
        ids = ids[:head] + ids[len(ids) - keep:]
        labels = labels[:head] + labels[len(labels) - keep:]
        row["prompt_truncated"] = True
    row["input_ids"], row["labels"] = ids, labels


def prompt_mismatches(conv: Conversation, tokenizer, template: Template) -> list[str]:
    """Where the inference prompt of a reply is not the start of the training text, as text or
    as tokens (a tokenizer can merge the prompt's last characters with the reply's first):
    what a model trained on the text would not see when it is asked. Empty when they agree."""
    full, _, why = _render(template, conv, tokenizer)
    if why:
        return [why]
    (whole,) = tokenize_ids([full], tokenizer, template.add_special_tokens)
    problems = []
    for k, turn in enumerate(conv.turns):
        if turn.role != "assistant":
            continue
        prompt = template.render(replace(conv, turns=conv.turns[:k]), tokenizer)[0]
        if not full.startswith(prompt):
            at = common_prefix(prompt, full)
            problems.append(f"reply {k}: the prompt's text differs from the training text at "
                            f"character {at}: {prompt[at:at + 20]!r} vs {full[at:at + 20]!r}")
            continue
        (asked,) = tokenize_ids([prompt], tokenizer, template.add_special_tokens)
        if whole[: len(asked)] != asked:
            at = common_prefix(asked, whole)
            problems.append(f"reply {k}: the prompt's tokens differ from the training text's "
                            f"at token {at}: {asked[at:at + 3]} vs {whole[at:at + 3]}")
    return problems


def _encode_seq2seq(convs: Sequence[Conversation], tokenizer, template: Template,
                    max_length: int) -> list[dict]:
    """Encoder-decoder rows: the encoder reads the rendered prompt (cut from the left when
    too long), the decoder is trained on the final reply and EOS (never cut: dropped if too
    long)."""
    prompts = [template.render_prompt(c, tokenizer) for c in convs]
    inputs = encoder_ids(prompts, tokenizer, template.add_special_tokens)
    replies = tokenizer([c.answer for c in convs], add_special_tokens=False)["input_ids"]
    rows = []
    for ids, reply in zip(inputs, replies, strict=True):
        labels = [*reply, tokenizer.eos_token_id]
        row = {"input_ids": ids, "labels": labels, "dropped": "", "prompt_truncated": False,
               "turns_dropped": False, "tokens": len(ids)}
        if len(labels) > max_length:
            row.update(input_ids=[], labels=[], dropped="reply + EOS longer than max_length")
        elif len(ids) > max_length:
            row.update(input_ids=ids[len(ids) - max_length:], prompt_truncated=True)
        rows.append(row)
    return rows


def _rows(convs: Sequence[Conversation], tokenizer, template: Template, max_length: int,
          masking: str, seq2seq: bool) -> list[dict]:
    if seq2seq:
        return _encode_seq2seq(convs, tokenizer, template, max_length)
    return encode_rows(convs, tokenizer, template, max_length, masking)


def encode_conversations(convs: Sequence[Conversation], tokenizer, template: Template,
                         max_length: int, masking: str = "assistant", seq2seq: bool = False
                         ) -> tuple[list[dict], EncodeReport]:
    """Token ids and labels (``{"input_ids", "labels"}``) of the conversations that fit, in
    order, with a report; ``seq2seq`` encodes for an encoder-decoder."""
    check_masking(masking)
    rows = _rows(convs, tokenizer, template, max_length, masking, seq2seq)
    report = EncodeReport(
        kept=sum(not r["dropped"] for r in rows),
        prompt_truncated=sum(r["prompt_truncated"] for r in rows),
        turns_dropped=sum(r["turns_dropped"] for r in rows),
        dropped=Counter(r["dropped"] for r in rows if r["dropped"]),
        examples_dropped=[c.where for c, r in zip(convs, rows, strict=True) if r["dropped"]],
        lengths=np.array([r["tokens"] for r in rows], dtype=np.int64))
    kept = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows
            if not r["dropped"]]
    return kept, report


STATUS = {"dropped": datasets.Value("string"), "prompt_truncated": datasets.Value("bool"),
          "turns_dropped": datasets.Value("bool"), "tokens": datasets.Value("int32")}
_IDS = datasets.Sequence(datasets.Value("int32"))
_ENCODED = {"input_ids": _IDS, "labels": _IDS}


def _encode_table(batch: dict, tokenizer, template: Template, max_length: int, masking: str,
                  seq2seq: bool) -> dict:
    rows = _rows([from_row(r) for r in rows_of(batch)], tokenizer, template, max_length,
                 masking, seq2seq)
    return {key: [r[key] for r in rows] for key in (*_ENCODED, *STATUS)}


BAR_FROM = 50_000  # records from which tokenising shows a progress bar


def map_workers(n: int, requested: int | None) -> int:
    """The processes a batched ``datasets.map`` over ``n`` records uses: ``requested``, else
    one per 50,000 records, up to one per CPU. Forked workers run the Rust tokenizer
    single-threaded, quietly."""
    workers = requested or min(os.cpu_count() or 1, max(1, n // 50_000))
    if workers > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return workers


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """``datasets``' progress bars on or off for the block (restored afterwards)."""
    was_on = not datasets.are_progress_bars_disabled()
    if was_on and not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on and not enabled:
            datasets.enable_progress_bars()


def encode_records(records: Records, tokenizer, template: Template, max_length: int,
                   masking: str, seq2seq: bool, out: Path, workers: int | None = None,
                   progress: bool = False) -> tuple[datasets.Dataset, EncodeReport]:
    """``encode_conversations`` for an Arrow-backed set of any size (``encode_table``).
    Returns the rows that fit (columns ``input_ids``, ``labels``) and the report."""
    check_masking(masking)
    return encode_table(records, _encode_table, _ENCODED,
                        {"tokenizer": tokenizer, "template": template, "max_length": max_length,
                         "masking": masking, "seq2seq": seq2seq}, out, workers, progress)


def encode_table(records: Records, encode_batch, columns: dict, fn_kwargs: dict, out: Path,
                 workers: int | None = None, progress: bool = False,
                 rows_are_records: bool = True) -> tuple[datasets.Dataset, EncodeReport]:
    """``encode_batch`` (a batch of record rows, ``fn_kwargs`` -> the ``columns`` and the
    ``STATUS`` columns of each encoded row) over ``records``, in batches by ``datasets.map``
    (in ``workers`` processes; by default one per 50,000 records, up to one per CPU) into the
    Arrow file ``out``, read back memory-mapped. Returns the rows that fit (``columns`` only)
    and the report; ``rows_are_records``: it names the first records dropped."""
    workers = map_workers(len(records), workers)
    with progress_bars(progress and len(records) >= BAR_FROM):  # a bar only where it helps
        table = records.table.map(
            encode_batch, batched=True, batch_size=1_000,
            features=datasets.Features({**columns, **STATUS}),
            remove_columns=records.table.column_names, num_proc=workers if workers > 1 else None,
            fn_kwargs=fn_kwargs, cache_file_name=str(out), load_from_cache_file=False,
            new_fingerprint=uuid.uuid4().hex, desc=f"tokenizing {out.stem}")
    dropped = table.data.column("dropped")
    reasons = Counter({str(v["values"]): int(v["counts"])
                       for v in pc.value_counts(dropped).to_pylist() if v["values"]})
    fits = pc.equal(dropped, "").to_numpy(zero_copy_only=False)
    kept = np.flatnonzero(fits)

    def among_kept(column: str) -> int:
        return int(table.data.column(column).to_numpy(zero_copy_only=False)[fits].sum())

    report = EncodeReport(
        kept=len(kept), prompt_truncated=among_kept("prompt_truncated"),
        turns_dropped=among_kept("turns_dropped"), dropped=reasons,
        examples_dropped=[records[int(i)].where for i in np.flatnonzero(~fits)[:10]]
        if rows_are_records else [],
        lengths=table.data.column("tokens").to_numpy().astype(np.int64))
    rows = table.select_columns(list(columns))
    return (rows.select(kept) if len(kept) < len(table) else rows), report


def row_lengths(rows) -> np.ndarray:
    if isinstance(rows, datasets.Dataset):
        ids = rows.select_columns(["input_ids"]).with_format("arrow")
        return np.concatenate([pc.list_value_length(b["input_ids"]).to_numpy()
                               for b in ids.iter(batch_size=100_000)] or [np.zeros(0, int)])
    return np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)


class Packed(torch.utils.data.Dataset):
    """Examples greedily concatenated, in order, into rows of at most ``max_length`` tokens.

    Each packed row carries ``position_ids`` that restart at 0 for every example; with no
    attention mask, transformers turns them into a block-diagonal causal mask (eager, sdpa and
    flex attention) or variable-length kernels (flash attention), so no token attends across
    examples. The first token of every example is never a target. Rows are assembled when
    read: only where each one starts is held, so packing works on data of any size (a list of
    encoded rows, or the Arrow table of ``encode_records``).
    """

    def __init__(self, rows, max_length: int):
        self.rows = rows
        starts, total = [], 0
        for i, n in enumerate(row_lengths(rows).tolist()):
            if not starts or total + n > max_length:
                starts.append(i)
                total = 0
            total += n
        self.bounds = np.array([*starts, len(rows)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, g: int) -> dict:
        if not 0 <= g < len(self):
            raise IndexError(g)
        a, b = int(self.bounds[g]), int(self.bounds[g + 1])
        part = self.rows[a:b]
        if isinstance(part, dict):  # a datasets slice: columns
            examples, labels_of = part["input_ids"], part["labels"]
        else:
            examples, labels_of = [r["input_ids"] for r in part], [r["labels"] for r in part]
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for example, example_labels in zip(examples, labels_of, strict=True):
            ids.extend(example)
            labels.extend([IGNORE, *example_labels[1:]])
            positions.extend(range(len(example)))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}

    def __iter__(self):
        return (self[g] for g in range(len(self)))


class Collator:
    """Right-pads a batch. Unpacked rows get an attention mask; packed rows (with
    ``position_ids``) get position ids only, padding forming its own block, and
    ``use_cache=False``."""

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
        if not packed:
            return {"input_ids": ids, "labels": labels, "attention_mask": extra}
        # transformers builds the block-diagonal mask from the position ids only when the
        # forward pass has no KV cache; models whose config says use_cache=True (most real
        # ones) would otherwise make one in training and attend across the packed examples
        return {"input_ids": ids, "labels": labels, "position_ids": extra, "use_cache": False}
