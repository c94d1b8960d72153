"""Reading instruction records from files, with errors that point at the bad record.

Owns the ``Record`` type (one single-turn instruction example with where it came from) and the
Alpaca JSON / JSON Lines reader. A JSON array is decoded element by element so every record
knows its line; any problem is reported as ``file:line: field: problem``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unitune.errors import UserError


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    source: str
    line: int
    meta: dict | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _iter_json_array(text: str, path: Path):
    """Yield (line, object) for each element of a top-level JSON array, decoding lazily."""
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if i >= len(text) or text[i] != "[":
        raise UserError(f"{path}:{_line_of(text, i)}: expected a JSON array of records "
                        "(or JSON Lines, one object per line)")
    i += 1
    n = len(text)
    expect_value = True
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            raise UserError(f"{path}:{_line_of(text, i)}: unexpected end of file inside the "
                            "JSON array (missing ']')")
        if text[i] == "]":
            return
        if not expect_value:
            if text[i] != ",":
                raise UserError(f"{path}:{_line_of(text, i)}: invalid JSON: expected ',' or "
                                f"']' between records, found {text[i]!r}")
            i += 1
            while i < n and text[i] in " \t\r\n":
                i += 1
            if i < n and text[i] == "]":
                raise UserError(f"{path}:{_line_of(text, i)}: invalid JSON: trailing comma "
                                "before ']'")
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        yield _line_of(text, i), obj
        i = end
        expect_value = False


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a .json or .jsonl file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); re-save the file "
                        "as UTF-8") from None


def iter_objects(path: Path):
    """(line, object) pairs of a JSON array file or a JSON Lines file."""
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(text, path)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def _to_record(obj, path: Path, line: int) -> Record:
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise UserError(f"{where}: record is a {type(obj).__name__}, expected an object with "
                        "'instruction' and 'output'")
    for field in ("instruction", "output"):
        if field not in obj:
            raise UserError(f"{where}: {field}: missing (an Alpaca record needs 'instruction' "
                            "and 'output', 'input' is optional)")
    for field in ("instruction", "input", "output"):
        if field in obj and obj[field] is not None and not isinstance(obj[field], str):
            raise UserError(f"{where}: {field}: expected a string, got "
                            f"{type(obj[field]).__name__}")
    if not obj["output"].strip():
        raise UserError(f"{where}: output: empty; a training example needs an answer")
    if not obj["instruction"].strip():
        raise UserError(f"{where}: instruction: empty")
    meta = {k: v for k, v in obj.items() if k not in ("instruction", "input", "output")}
    return Record(obj["instruction"], obj.get("input") or "", obj["output"], str(path), line,
                  meta or None)


def read_alpaca(path: str | Path, skip_invalid: bool = False,
                problems: list[str] | None = None) -> list[Record]:
    """All records of an Alpaca-format file (JSON array or JSON Lines), validated.

    An invalid record raises ``UserError`` naming ``file:line: field: problem``; with
    ``skip_invalid`` it is left out and the message appended to ``problems`` instead. A file
    that is not valid JSON at all is always an error.
    """
    path = Path(path)
    records = []
    for line, obj in iter_objects(path):
        try:
            records.append(_to_record(obj, path, line))
        except UserError as exc:
            if not skip_invalid:
                raise
            if problems is not None:
                problems.append(str(exc))
    return records


def read_many(paths: list[str], skip_invalid: bool = False,
              problems: list[str] | None = None) -> list[Record]:
    records: list[Record] = []
    for p in paths:
        records.extend(read_alpaca(p, skip_invalid, problems))
    return records
