"""JSON-lines files: reading them with one-line errors, and the files commands append to and
resume from (predictions, answers, judgments, samples, generated tasks), whose last line a
crash may have cut short."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from unitune.errors import UserError


def complete_lines(path: Path) -> list[str]:
    """The lines of a file this program appends to, one record per line. A last line without
    its newline is an append a crash cut short (cut off the file, so the next append starts a
    line of its own, and the record is made again), unless it is a whole record (a file
    written by hand): then it gets its newline."""
    data = path.read_bytes()
    tail = data[data.rfind(b"\n") + 1:]
    if tail:
        try:
            json.loads(tail)
        except ValueError:  # (json's errors and undecodable bytes): torn
            data = data[:-len(tail)]
            with path.open("r+b") as f:
                f.truncate(len(data))
        else:
            data += b"\n"
            with path.open("ab") as f:
                f.write(b"\n")
    return data.decode("utf-8").splitlines()


def read_jsonl(path: Path, fields: tuple[str, ...] = (), appended: bool = False) -> list[dict]:
    """The records of a JSON-lines file (gzipped when it ends in .gz; none when it does not
    exist yet: a cache), each with the string ``fields``; a bad line is an error naming it.
    ``appended``: a file this program appends to (``complete_lines``)."""
    if not path.exists():
        return []
    if appended:
        lines = complete_lines(path)
    else:
        try:
            data = path.read_bytes()
            lines = (gzip.decompress(data) if path.suffix == ".gz" else data).decode(
                "utf-8").splitlines()
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:  # (not UTF-8 or gzip)
            raise UserError(f"{path}: unreadable ({exc}); the file is damaged, get it "
                            "again") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not JSON ({exc.msg})") from None
        for field in fields:
            if not isinstance(row.get(field), str):
                raise UserError(f"{path}:{n}: {field}: missing or not a string")
        rows.append(row)
    return rows
