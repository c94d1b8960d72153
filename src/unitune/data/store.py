"""Records on disk: Arrow tables (through ``datasets``) read lazily, so data of any size
trains in flat memory.

Owns the row form of a ``Conversation`` (``to_row`` / ``from_row``: the system prompt, the turns
as a list of ``{role, content, input, tool_calls}``, where it came from, ``meta`` and the tool
definitions as JSON), of a ``PreferencePair`` (its prompt conversation's row, with the
``chosen`` and ``rejected`` answers, null for a conversation) and of a ``Prompt`` (its
conversation's row with the ``reference`` answer, null for the others), ``write``
(streams records into an Arrow file in fixed-size batches: memory holds one batch, however
many records there are) and ``Records``, a read-only sequence of ``Conversation``s over such a
table, memory-mapped by ``datasets``, or over a selection of its rows (``select`` keeps an
index array, not a copy). ``Records.from_list`` holds a small list in memory the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow as pa

from unitune.data.schema import Conversation, PreferencePair, Prompt, Turn, conversation_of

SCHEMA = pa.schema([
    ("system", pa.string()),
    ("turns", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()),
                                   ("input", pa.string()), ("tool_calls", pa.string())]))),
    ("source", pa.string()),
    ("line", pa.int64()),
    ("meta", pa.string()),
    ("tools", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("reference", pa.string()),
])
BATCH = 1_000  # records per Arrow record batch when writing and reading


def to_row(record: Conversation | PreferencePair | Prompt) -> dict:
    pair = isinstance(record, PreferencePair)
    conv = conversation_of(record)
    return {"system": conv.system,
            "turns": [{"role": t.role, "content": t.content, "input": t.input,
                       "tool_calls": t.tool_calls} for t in conv.turns],
            "source": conv.source, "line": conv.line,
            "meta": json.dumps(conv.meta, ensure_ascii=False, default=str) if conv.meta else "",
            "tools": conv.tools,
            "chosen": record.chosen if pair else None,
            "rejected": record.rejected if pair else None,
            "reference": record.reference if isinstance(record, Prompt) else None}


def from_row(row: dict) -> Conversation | PreferencePair | Prompt:
    conv = Conversation(tuple(Turn(t["role"], t["content"], t["input"], t["tool_calls"])
                              for t in row["turns"]),
                        row["system"], row["source"], row["line"],
                        json.loads(row["meta"]) if row["meta"] else {}, row["tools"])
    if row.get("chosen") is not None:
        return PreferencePair(conv, row["chosen"], row["rejected"])
    if row.get("reference") is not None:
        return Prompt(conv, row["reference"])
    return conv


def rows_of(batch: dict) -> Iterator[dict]:
    """The rows of a column batch (``{column: [values]}``, as ``datasets`` gives them)."""
    names = list(batch)
    yield from (dict(zip(names, values, strict=True))
                for values in zip(*(batch[n] for n in names), strict=True))


class Records(Sequence):
    """A sequence of records (``Conversation``s, or ``PreferencePair``s and ``Prompt``s for
    the preference stages) backed by an Arrow table (``datasets.Dataset``)."""

    def __init__(self, table: datasets.Dataset):
        self.table = table

    @classmethod
    def from_list(cls, convs: Iterable[Conversation | PreferencePair | Prompt]) -> Records:
        rows = [to_row(c) for c in convs]
        return cls(datasets.Dataset(pa.Table.from_pylist(rows, schema=SCHEMA)))

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        if len(parts) == 1:
            return parts[0]
        return cls(datasets.concatenate_datasets([p.table for p in parts]))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [from_row(r) for r in rows_of(self.table[i])]
        return from_row(self.table[int(i)])  # datasets handles negative and bad indices

    def __iter__(self) -> Iterator[Conversation]:
        for batch in self.table.iter(batch_size=BATCH):
            yield from (from_row(r) for r in rows_of(batch))

    def select(self, indices) -> Records:
        return Records(self.table.select(indices))


def write_rows(rows: Iterable[dict], path: Path, schema: pa.Schema) -> datasets.Dataset:
    """Stream ``rows`` into the Arrow file ``path`` (in batches of ``BATCH``: memory holds one)
    and return them memory-mapped from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                out.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                batch.clear()
        if batch:
            out.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
    tmp.replace(path)
    return datasets.Dataset.from_file(str(path))


def write(convs: Iterable[Conversation | PreferencePair | Prompt], path: Path) -> Records:
    """Stream records into the Arrow file ``path`` and return them memory-mapped from it."""
    return Records(write_rows(map(to_row, convs), path, SCHEMA))
