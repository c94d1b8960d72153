"""Combining datasets: mixing by weights or fixed counts, exact deduplication, train/val split.

Owns ``Source`` (one named list of records with an optional weight or fixed count), ``mix``
(the Flan-mini style sampler: fixed counts are taken exactly, repeating a source when it is
too small, and the report says so; ``examples/flan_mini.yaml`` is Flacuna's recipe), ``dedupe``
and ``split`` (a validation split that works on tiny datasets). Everything is deterministic in
the seed; every source gets its own RNG (seeded by ``f"{seed}:{name}"``) so adding a source
does not change what the others give.

Records are lists or Arrow-backed ``store.Records``; every step works on row indices (numpy),
so on Records it selects rows of the memory-mapped table and copies no data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unitune.data.schema import Conversation, PreferencePair, Prompt, conversation_of
from unitune.data.store import Records
from unitune.errors import UserError


@dataclass(frozen=True)
class Source:
    """A named list of records; ``weight`` or ``count`` (at most one) says how many to take."""

    name: str
    records: Sequence
    weight: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UserError("data source: a source needs a non-empty name")
        if self.weight is not None and self.count is not None:
            raise UserError(f"data source {self.name!r}: give a weight or a count, not both "
                            f"(weight={self.weight}, count={self.count})")
        w = self.weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))
                              or not math.isfinite(w) or w < 0):
            raise UserError(f"data source {self.name!r}: weight must be a finite number >= 0, "
                            f"got {w!r}")
        c = self.count
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise UserError(f"data source {self.name!r}: count must be an integer >= 0, "
                            f"got {c!r}")


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _take(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices of ``range(n)``: a shuffled prefix when k <= n, else the shuffle repeated."""
    order = rng.permutation(n)
    if k <= n:
        return order[:k]
    full, rest = divmod(k, n)
    return np.concatenate([np.tile(order, full), order[:rest]])


def _select(records: Sequence, indices: np.ndarray) -> Sequence:
    if hasattr(records, "select"):  # Records, or a datasets.Dataset
        return records.select(indices)
    return [records[i] for i in indices.tolist()]


def _concat(parts: list[Sequence]) -> Sequence:
    if not any(isinstance(p, Records) for p in parts):
        return [r for p in parts for r in p]
    return Records.concat([p if isinstance(p, Records) else Records.from_list(p)
                           for p in parts])


def mix(sources: list[Source], seed: int, total: int | None = None
        ) -> tuple[Sequence[Conversation], dict]:
    """Mix ``sources`` into one shuffled list; returns (records, report).

    - ``count``: exactly that many records (without replacement when count <= available,
      otherwise by repeating the source's shuffled list; ``repeated`` is then true).
    - ``weight`` with ``total``: round(total * w / sum of weights) records.
    - ``weight`` without ``total``: relative to the source's size (1.0 keeps it, 0.5 halves
      it, 2.0 doubles it by repetition).
    - neither: all the source's records.

    The report maps each source name to ``{"available", "taken", "repeated"}``.
    """
    if not sources:
        raise UserError("mix: no data sources given")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"mix: data source names must be unique; repeated: {', '.join(dupes)}")
    weighted = [s for s in sources if s.weight is not None]
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise UserError(f"mix: total must be an integer >= 0, got {total!r}")
        if not weighted:
            raise UserError("mix: total only applies to weighted sources, and no source has a "
                            "weight")
    weight_sum = sum(s.weight for s in weighted)
    if total is not None and weight_sum <= 0:
        raise UserError("mix: the weights of the weighted sources sum to 0")

    picked: list[np.ndarray] = []
    offset = 0
    report: dict[str, dict] = {}
    for src in sources:
        n = len(src.records)
        if src.count is not None:
            k = src.count
        elif src.weight is not None:
            k = round(total * src.weight / weight_sum) if total is not None \
                else round(n * src.weight)
        else:
            k = n
        if k > 0 and n == 0:
            raise UserError(f"data source {src.name!r}: {k} records requested but the source "
                            "is empty")
        picked.append(offset + _take(n, k, _rng(seed, src.name)))
        offset += n
        report[src.name] = {"available": n, "taken": k, "repeated": k > n}
    order = np.concatenate(picked)
    order = order[_rng(seed, ":mix").permutation(len(order))]
    return _select(_concat([s.records for s in sources]), order), report


def _digest(record: Conversation | PreferencePair | Prompt) -> bytes:
    conv = conversation_of(record)
    answers = (record.chosen, record.rejected) if isinstance(record, PreferencePair) else \
        (record.reference,) if isinstance(record, Prompt) else ()
    key = [conv.system, conv.tools,
           [(t.role, t.content, t.input, t.tool_calls) for t in conv.turns], *answers]
    return hashlib.blake2b(json.dumps(key, ensure_ascii=False).encode(), digest_size=16).digest()


def dedupe(records: Sequence[Conversation]) -> tuple[Sequence[Conversation], int]:
    """Drop exact duplicates (same system and turns; a pair: and answers; a prompt: and its
    reference), keeping the first;
    (kept, dropped).
    Holds a 16-byte digest per record, not the records."""
    digests = np.fromiter((_digest(c) for c in records), dtype="S16", count=len(records))
    first = np.sort(np.unique(digests, return_index=True)[1])
    return _select(records, first), len(records) - len(first)


def split(records: Sequence, validation: float | int, seed: int) -> tuple[Sequence, Sequence]:
    """Shuffle (seeded) and split into (train, validation).

    ``validation`` is a fraction in (0, 1) or a count >= 0. A fraction gives at least one
    validation record when there are two or more records, and always leaves at least one for
    training; a count must be smaller than the number of records.
    """
    n = len(records)
    if isinstance(validation, bool) or not isinstance(validation, (int, float)):
        raise UserError(f"validation split: expected a fraction in (0, 1) or a record count, "
                        f"got {validation!r}")
    if isinstance(validation, int):
        if validation < 0:
            raise UserError(f"validation split: the count must be >= 0, got {validation}")
        if validation and validation >= n:
            raise UserError(f"validation split: {validation} validation records requested but "
                            f"the data has only {n} record{'s' if n != 1 else ''} (at least "
                            "one must remain for training)")
        n_val = validation
    else:
        if not math.isfinite(validation) or not 0 <= validation < 1:
            raise UserError(f"validation split: a fraction must be in (0, 1), got {validation} "
                            "(give an integer for a number of records)")
        n_val = round(n * validation)
        if validation > 0 and n >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, max(n - 1, 0))
    order = _rng(seed, ":split").permutation(n)
    return _select(records, order[n_val:]), _select(records, order[:n_val])
