"""Reading (and writing) instruction data in every common format, pointing at bad records.

Owns format detection and the readers for Alpaca (with optional ``system`` and ``history``),
ShareGPT (``conversations`` with ``from``/``value``), OpenAI ``messages``, Dolly
(``instruction``/``context``/``response``), FLAN (``inputs``/``targets``), prompt/completion,
preference pairs (``conversations`` + ``chosen``/``rejected``, or plain strings) and plain text
(``.txt`` lines or ``{"text"}`` records), all producing the records of ``schema``. JSON Lines
are streamed line by line; a JSON array is decoded element by element so each record knows
its line. Every problem is reported as ``file:line: field: problem``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from unitune.data.schema import (
    Conversation,
    PlainText,
    PreferencePair,
    Turn,
    check_conversation,
)
from unitune.errors import UserError, did_you_mean

FORMATS = ("alpaca", "sharegpt", "openai", "dolly", "flan", "prompt_completion", "preference",
           "text")
Record = Conversation | PreferencePair | PlainText

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                   "model": "assistant", "system": "system", "observation": "tool",
                   "function_call": "assistant", "tool": "tool", "function": "tool"}


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _json_error(path: Path, text: str, exc: json.JSONDecodeError) -> UserError:
    trailing = re.search(r",\s*$", text[: exc.pos])
    if trailing and exc.pos < len(text) and text[exc.pos] in "}]":
        line = _line_of(text, trailing.start())
        return UserError(f"{path}:{line}: invalid JSON: trailing comma before "
                         f"'{text[exc.pos]}' (remove the comma)")
    return UserError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}")


def _iter_json_array(text: str, path: Path) -> Iterator[tuple[int, object]]:
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    i += 1  # the caller checked for '['
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
            comma = i
            i += 1
            while i < n and text[i] in " \t\r\n":
                i += 1
            if i < n and text[i] == "]":
                raise UserError(f"{path}:{_line_of(text, comma)}: invalid JSON: trailing comma "
                                "before ']' (remove the comma)")
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise _json_error(path, text, exc) from None
        yield _line_of(text, i), obj
        i = end
        expect_value = False


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a .json, .jsonl or .txt file")


def _decode(raw: bytes, path: Path, line_offset: int = 0) -> str:
    try:
        return raw.decode("utf-8-sig" if line_offset == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        line = line_offset + raw.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {exc.start} of the line); "
                        "re-save the file as UTF-8") from None


def iter_objects(path: Path) -> Iterator[tuple[int, object]]:
    """(line, object) pairs of a JSON array file or a JSON Lines file (streamed)."""
    _check_exists(path)
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        text = _decode(path.read_bytes(), path)
        yield from _iter_json_array(text, path)
        return
    if head.startswith(b"{") and path.suffix != ".jsonl":
        # a single JSON object: maybe a JSON Lines file, maybe one document (say so if so)
        first = head.split(b"\n", 1)[0].strip()
        try:
            json.loads(first)
        except json.JSONDecodeError:
            text = _decode(path.read_bytes(), path)
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise _json_error(path, text, exc) from None
            raise UserError(f"{path}:1: expected a JSON array of records or JSON Lines (one "
                            "record per line), found a single JSON object") from None
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno - 1)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def detect_format(obj: object) -> str | None:
    """The format a record's keys say it is in, or None."""
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if "inputs" in keys and "targets" in keys:
        return "flan"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def _str_field(obj: dict, key: str, where: str, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise UserError(f"{where}: {key}: missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key}: expected a string, got {type(value).__name__}")
    return value


def _alpaca(obj: dict, where: str, src: str, line: int) -> Conversation:
    for key in ("instruction", "output"):
        if key not in obj:
            raise UserError(f"{where}: {key}: missing (an Alpaca record needs 'instruction' and "
                            "'output'; 'input', 'system' and 'history' are optional)")
    instruction = _str_field(obj, "instruction", where)
    output = _str_field(obj, "output", where)
    if not instruction.strip():
        raise UserError(f"{where}: instruction: empty")
    if not output.strip():
        raise UserError(f"{where}: output: empty; a training example needs an answer")
    turns: list[Turn] = []
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise UserError(f"{where}: history: expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise UserError(f"{where}: history[{i}]: expected [question, answer] strings")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    turns += [Turn("user", instruction, _str_field(obj, "input", where, False)),
              Turn("assistant", output)]
    meta = {k: v for k, v in obj.items()
            if k not in ("instruction", "input", "output", "system", "history")}
    return Conversation(tuple(turns), _str_field(obj, "system", where, False), src, line, meta)


def _sharegpt_turns(items, where: str, field: str) -> tuple[str, list[Turn]]:
    if not isinstance(items, list):
        raise UserError(f"{where}: {field}: expected a list of messages")
    system, turns = "", []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict):
            raise UserError(f"{where}: {field}[{i}]: expected an object with 'from' and 'value'")
        role_key = "from" if "from" in msg else "role"
        text_key = "value" if "value" in msg else "content"
        if role_key not in msg or text_key not in msg:
            raise UserError(f"{where}: {field}[{i}]: needs 'from' and 'value' (or 'role' and "
                            "'content')")
        raw_role, text = msg[role_key], msg[text_key]
        if not isinstance(text, str):
            raise UserError(f"{where}: {field}[{i}].{text_key}: expected a string, got "
                            f"{type(text).__name__}")
        role = _SHAREGPT_ROLES.get(str(raw_role).lower())
        if role is None:
            raise UserError(f"{where}: {field}[{i}].{role_key}: unknown role {raw_role!r}"
                            f"{did_you_mean(str(raw_role), _SHAREGPT_ROLES)}")
        if role == "system":
            if turns:
                raise UserError(f"{where}: {field}[{i}]: a system message after the first turn")
            system = text
        else:
            turns.append(Turn(role, text))
    return system, turns


def _conversation(obj: dict, field: str, where: str, src: str, line: int) -> Conversation:
    system, turns = _sharegpt_turns(obj[field], where, field)
    if "system" in obj and not system:
        system = _str_field(obj, "system", where, False)
    meta = {k: v for k, v in obj.items() if k not in (field, "system")}
    return Conversation(tuple(turns), system, src, line, meta)


def _preference(obj: dict, where: str, src: str, line: int) -> PreferencePair:
    if "conversations" in obj:
        prompt = _conversation({k: v for k, v in obj.items() if k not in ("chosen", "rejected")},
                               "conversations", where, src, line)
    else:
        prompt = Conversation((Turn("user", _str_field(obj, "prompt", where)),), "", src, line)
    answers = []
    for key in ("chosen", "rejected"):
        value = obj[key]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: {key}: expected a non-empty answer string (or a message "
                            "with 'value')")
        answers.append(value)
    check_conversation(prompt, for_training=False)
    if prompt.turns[-1].role != "user":
        raise UserError(f"{where}: conversations: a preference prompt must end with a user turn")
    return PreferencePair(prompt, answers[0], answers[1])


def to_record(obj: object, fmt: str, where: str, src: str, line: int) -> Record:
    """One raw JSON object of format ``fmt`` as a validated record."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: record is a {type(obj).__name__}, expected an object")
    if fmt == "alpaca":
        return check_conversation(_alpaca(obj, where, src, line))
    if fmt == "sharegpt":
        return check_conversation(_conversation(obj, "conversations", where, src, line))
    if fmt == "openai":
        return check_conversation(_conversation(obj, "messages", where, src, line))
    if fmt == "dolly":
        conv = Conversation.single(_str_field(obj, "instruction", where),
                                   _str_field(obj, "response", where),
                                   _str_field(obj, "context", where, False), source=src,
                                   line=line, meta={k: v for k, v in obj.items() if k not in
                                                    ("instruction", "response", "context")})
        return check_conversation(conv)
    if fmt == "flan":
        return check_conversation(Conversation.single(
            _str_field(obj, "inputs", where), _str_field(obj, "targets", where), source=src,
            line=line))
    if fmt == "prompt_completion":
        return check_conversation(Conversation.single(
            _str_field(obj, "prompt", where), _str_field(obj, "completion", where), source=src,
            line=line))
    if fmt == "preference":
        return _preference(obj, where, src, line)
    if fmt == "text":
        text = _str_field(obj, "text", where)
        if not text.strip():
            raise UserError(f"{where}: text: empty")
        return PlainText(text, src, line)
    raise UserError(f"unknown data format '{fmt}'{did_you_mean(fmt, FORMATS)}; formats: "
                    f"{', '.join(FORMATS)}")


def iter_records(path: str | Path, fmt: str = "auto", skip_invalid: bool = False,
                 problems: list[str] | None = None) -> Iterator[Record]:
    """Stream the records of a file. ``fmt='auto'`` detects the format from the first record
    and then holds every record to it, so a file mixing formats is an error at the first
    record that differs. With ``skip_invalid`` a bad record is left out and its message is
    appended to ``problems``; a file that is not valid JSON at all is always an error.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown data format '{fmt}'{did_you_mean(fmt, FORMATS)}; formats: "
                        f"{', '.join(FORMATS)}")
    if path.suffix == ".txt" and fmt in ("auto", "text"):
        _check_exists(path)
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = _decode(raw, path, lineno - 1).rstrip("\n")
                if line.strip():
                    yield PlainText(line, str(path), lineno)
        return
    detected_at = 0
    for line, obj in iter_objects(path):
        where = f"{path}:{line}"
        try:
            found = detect_format(obj)
            if fmt == "auto":
                if found is None:
                    keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else \
                        type(obj).__name__
                    raise UserError(f"{where}: cannot tell the format from the fields ({keys}); "
                                    f"pass the format explicitly ({', '.join(FORMATS)})")
                fmt, detected_at = found, line
            elif detected_at and found is not None and found != fmt:
                raise UserError(f"{where}: record looks like {found} but the file is {fmt} "
                                f"(detected at line {detected_at}); mixed formats in one file")
            yield to_record(obj, fmt, where, str(path), line)
        except UserError as exc:
            if not skip_invalid:
                raise
            if problems is not None:
                problems.append(str(exc))


def read_records(paths: list[str] | str, fmt: str = "auto", skip_invalid: bool = False,
                 problems: list[str] | None = None) -> list[Record]:
    paths = [paths] if isinstance(paths, str | Path) else paths
    return [rec for p in paths for rec in iter_records(p, fmt, skip_invalid, problems)]


def read_conversations(paths: list[str] | str, fmt: str = "auto", skip_invalid: bool = False,
                       problems: list[str] | None = None) -> list[Conversation]:
    """Records for instruction tuning; preference pairs and plain text are refused."""
    records = read_records(paths, fmt, skip_invalid, problems)
    for rec in records:
        if not isinstance(rec, Conversation):
            kind = "a preference pair" if isinstance(rec, PreferencePair) else "plain text"
            raise UserError(f"{rec.where}: is {kind}; instruction tuning needs conversations "
                            "(Alpaca, ShareGPT, OpenAI messages, Dolly, FLAN, prompt/completion)")
    return records  # type: ignore[return-value]


def to_json(record: Record, fmt: str) -> dict:
    """A record as a JSON object in ``fmt`` (for ``unitune data convert``)."""
    where = record.where
    if isinstance(record, PlainText):
        if fmt != "text":
            raise UserError(f"{where}: plain text converts only to 'text'")
        return {"text": record.text}
    if isinstance(record, PreferencePair):
        if fmt != "preference":
            raise UserError(f"{where}: a preference pair converts only to 'preference'")
        conv = [{"from": "human" if t.role == "user" else "gpt", "value": t.user_text()}
                for t in record.prompt.turns]
        out = {"conversations": conv, "chosen": {"from": "gpt", "value": record.chosen},
               "rejected": {"from": "gpt", "value": record.rejected}}
        if record.prompt.system:
            out["system"] = record.prompt.system
        return out
    conv = record
    if fmt in ("alpaca", "dolly", "flan", "prompt_completion"):
        last_user = conv.turns[-2] if len(conv.turns) >= 2 else None
        if last_user is None or last_user.role != "user" or \
                any(t.role == "tool" for t in conv.turns):
            raise UserError(f"{where}: cannot be written as {fmt} (needs user/assistant turns)")
        history = [[conv.turns[i].user_text(), conv.turns[i + 1].content]
                   for i in range(0, len(conv.turns) - 2, 2)]
        if fmt == "alpaca":
            out = {"instruction": last_user.content, "input": last_user.input,
                   "output": conv.answer}
            if conv.system:
                out["system"] = conv.system
            if history:
                out["history"] = history
            return {**out, **{k: v for k, v in conv.meta.items() if k not in out}}
        if history or conv.system:
            raise UserError(f"{where}: a multi-turn conversation (or one with a system prompt) "
                            f"cannot be written as {fmt}; use sharegpt or openai")
        if fmt == "dolly":
            return {"instruction": last_user.content, "context": last_user.input,
                    "response": conv.answer}
        if fmt == "flan":
            return {"inputs": last_user.user_text(), "targets": conv.answer}
        return {"prompt": last_user.user_text(), "completion": conv.answer}
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "tool": "observation"}
        msgs = ([{"from": "system", "value": conv.system}] if conv.system else []) + [
            {"from": names[t.role], "value": t.user_text()} for t in conv.turns]
        return {"conversations": msgs}
    if fmt == "openai":
        msgs = ([{"role": "system", "content": conv.system}] if conv.system else []) + [
            {"role": t.role, "content": t.user_text()} for t in conv.turns]
        return {"messages": msgs}
    raise UserError(f"cannot convert to '{fmt}'{did_you_mean(fmt, FORMATS)}; formats: "
                    f"{', '.join(FORMATS)}")
