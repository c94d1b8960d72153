"""Reading (and writing) instruction data in every common format, pointing at bad records.

Owns format detection and the readers for Alpaca (with optional ``system`` and ``history``),
ShareGPT (``conversations`` with ``from``/``value``), OpenAI ``messages``, Dolly
(``instruction``/``context``/``response``), FLAN (``inputs``/``targets``), prompt/completion,
question/answer (GSM8K and other QA sets), preference pairs (``conversations`` +
``chosen``/``rejected``, or plain strings), prompts alone (TRL's prompt-only ``prompt``, with
an optional reference ``answer``) and plain text (``.txt`` lines or ``{"text"}`` records), all
producing the records of ``schema``. JSON Lines are streamed line by line, and a JSON array is
decoded element by element from a window of the file (so a multi-gigabyte array streams too,
and each record knows its line). Every problem is reported as ``file:line: field: problem``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from unitune.data.schema import (
    Conversation,
    PlainText,
    PreferencePair,
    Prompt,
    Turn,
    check_conversation,
)
from unitune.errors import UserError, did_you_mean

FORMATS = ("alpaca", "sharegpt", "openai", "dolly", "flan", "prompt_completion", "qa",
           "preference", "prompt", "text")
Record = Conversation | PreferencePair | Prompt | PlainText
REFERENCE_FIELDS = ("answer", "solution", "reference", "ground_truth")  # a prompt's answer

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                   "model": "assistant", "system": "system", "observation": "tool",
                   "function_call": "assistant", "tool": "tool", "function": "tool"}


def _json_error(path: Path, text: str, exc: json.JSONDecodeError, first_line: int = 1,
                first_col: int = 0) -> UserError:
    """The one-line error for a JSON decoding failure in ``text`` (which starts at line
    ``first_line``, column ``first_col + 1`` of the file), naming a trailing comma as such."""
    trailing = re.search(r",\s*$", text[: exc.pos])
    if trailing and exc.pos < len(text) and text[exc.pos] in "}]":
        line = first_line + text.count("\n", 0, trailing.start())
        return UserError(f"{path}:{line}: invalid JSON: trailing comma before "
                         f"'{text[exc.pos]}' (remove the comma)")
    col = exc.colno + (first_col if exc.lineno == 1 else 0)
    return UserError(f"{path}:{first_line + exc.lineno - 1}:{col}: invalid JSON: {exc.msg}")


_CHUNK = 1 << 20  # bytes read at a time from a JSON array


class _ArrayStream:
    """The text of a JSON array file, read in chunks: a window ``buf`` of decoded text and
    the file line its first character is on. Consumed text is dropped, so memory holds about
    one chunk and one record however large the file is."""

    def __init__(self, f, path: Path, chunk: int):
        self.f, self.path, self.chunk = f, path, chunk
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.line = 1  # the line of buf[0]
        self.col = 0  # and its column (0-based)
        self.eof = False

    def more(self, at_least: int = 0) -> bool:
        """Append the next chunk (at least ``at_least`` bytes); False at end of file."""
        if self.eof:
            return False
        raw = self.f.read(max(self.chunk, at_least))
        try:
            text = self.utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            decoded = self.line - 1 + self.buf.count("\n")  # lines before this chunk
            line = decoded + raw.count(b"\n", 0, max(exc.start, 0)) + 1
            raise UserError(f"{self.path}:{line}: not valid UTF-8; re-save the file as "
                            "UTF-8") from None
        self.eof = not raw
        self.buf += text
        return not self.eof

    def skip_space(self, i: int) -> int:
        while True:
            n = len(self.buf)
            while i < n and self.buf[i] in " \t\r\n":
                i += 1
            if i < n or not self.more():
                return i

    def drop(self, i: int) -> int:
        """Forget the text before ``i`` once it is most of the window; the new index of i."""
        if i < self.chunk:
            return i
        newlines = self.buf.count("\n", 0, i)
        self.line += newlines
        self.col = i - self.buf.rfind("\n", 0, i) - 1 if newlines else self.col + i
        self.buf = self.buf[i:]
        return 0

    def line_of(self, i: int) -> int:
        return self.line + self.buf.count("\n", 0, i)

    def error(self, exc: json.JSONDecodeError) -> UserError:
        return _json_error(self.path, self.buf, exc, self.line, self.col)


def _maybe_cut(exc: json.JSONDecodeError, text: str) -> bool:
    """Whether a decoding error may only mean the record goes on past the window."""
    return exc.pos >= len(text) - 16 or exc.msg.startswith("Unterminated string")


def _iter_json_array(f, path: Path, chunk: int = _CHUNK) -> Iterator[tuple[int, object]]:
    """(line, element) pairs of a JSON array file, decoded element by element from a window
    of the file, so a multi-gigabyte array streams like JSON Lines."""
    decoder = json.JSONDecoder()
    s = _ArrayStream(f, path, chunk)
    s.more()
    i = s.skip_space(0) + 1  # the caller checked for '['
    expect_value = True
    line_at, line = 0, s.line  # line of buf[line_at], counted incrementally

    def at_end(i: int) -> None:
        if i >= len(s.buf):
            raise UserError(f"{path}:{s.line_of(i)}: unexpected end of file inside the JSON "
                            "array (missing ']')")

    while True:
        i = s.skip_space(i)
        at_end(i)
        if s.buf[i] == "]":
            return
        if not expect_value:
            if s.buf[i] != ",":
                raise UserError(f"{path}:{s.line_of(i)}: invalid JSON: expected ',' or ']' "
                                f"between records, found {s.buf[i]!r}")
            comma = i
            i = s.skip_space(i + 1)
            at_end(i)
            if s.buf[i] == "]":
                raise UserError(f"{path}:{s.line_of(comma)}: invalid JSON: trailing comma "
                                "before ']' (remove the comma)")
        while True:
            try:
                obj, end = decoder.raw_decode(s.buf, i)
            except json.JSONDecodeError as exc:
                if s.eof or not _maybe_cut(exc, s.buf):
                    raise s.error(exc) from None
                s.more(len(s.buf))  # a record longer than the window: grow it
                continue
            if end < len(s.buf) or s.eof or not s.more():
                break  # (a value ending exactly at the window's end may go on)
        line += s.buf.count("\n", line_at, i)
        line_at = i
        yield line, obj
        expect_value = False
        new = s.drop(end)
        if new != end:
            line_at, line = 0, s.line
        i = new


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
    """(line, object) pairs of a JSON array file or a JSON Lines file (streamed). A JSON
    Lines line after the first that is not JSON (or not UTF-8) comes as its ``UserError``
    (the caller raises it or goes on: each line stands alone); a file whose first record is
    not JSON, or a JSON array that is not JSON, raises."""
    _check_exists(path)
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
        if head.startswith(b"{") and path.suffix != ".jsonl":
            f.seek(0)  # the whole first line, however long
            first = next((ln for ln in f if ln.strip()), b"").lstrip(b"\xef\xbb\xbf").strip()
    if head.startswith(b"["):
        with path.open("rb") as f:
            yield from _iter_json_array(f, path)
        return
    if head.startswith(b"{") and path.suffix != ".jsonl":
        # a single JSON object: maybe a JSON Lines file, maybe one document (say so if so)
        try:
            json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = _decode(path.read_bytes(), path)
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise _json_error(path, text, exc) from None
            raise UserError(f"{path}:1: expected a JSON array of records or JSON Lines (one "
                            "record per line), found a single JSON object") from None
    with path.open("rb") as f:
        read_one = False  # a first line that is not JSON: the file is not JSON Lines at all
        for lineno, raw in enumerate(f, start=1):
            try:
                line = _decode(raw, path, lineno - 1)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}:{exc.colno}: invalid JSON: {exc.msg}"
                                    + ("" if read_one else " (records are a JSON array or "
                                       "JSON Lines: one object per line)")) from None
            except UserError as exc:
                if not read_one:
                    raise
                yield lineno, exc  # (one bad line: the others still read)
                continue
            read_one = True
            yield lineno, obj


def detect_format(obj: object) -> str | None:
    """The format a record's keys say it is in, or None."""
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if keys & {"chosen", "rejected"}:  # (a pair missing one is a pair to point at)
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
    if "question" in keys and "answer" in keys:
        return "qa"
    if "prompt" in keys:
        return "prompt"
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
    prompt = _alpaca_prompt(obj, where, src, line)
    output = _str_field(obj, "output", where)
    if not output.strip():
        raise UserError(f"{where}: output: empty; a training example needs an answer")
    return prompt.with_reply(output)


def _alpaca_prompt(obj: dict, where: str, src: str, line: int) -> Conversation:
    """An Alpaca record's conversation up to its instruction: the history, the system
    prompt, the instruction and input."""
    instruction = _str_field(obj, "instruction", where)
    if not instruction.strip():
        raise UserError(f"{where}: instruction: empty")
    turns: list[Turn] = []
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise UserError(f"{where}: history: expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise UserError(f"{where}: history[{i}]: expected [question, answer] strings")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    turns.append(Turn("user", instruction, _str_field(obj, "input", where, False)))
    meta = {k: v for k, v in obj.items()
            if k not in ("instruction", "input", "output", "system", "history", "chosen",
                         "rejected")}
    return Conversation(tuple(turns), _str_field(obj, "system", where, False), src, line, meta)


def _json_value(value, where: str):
    """A JSON value given as itself or as JSON text (tool definitions and call arguments come
    both ways)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") \
                from None
    return value


def _tool_calls(value, where: str) -> str:
    """An assistant turn's calls, from OpenAI's ``tool_calls`` (``{"function": {"name",
    "arguments"}}``) or a ShareGPT ``function_call`` value (``{"name", "arguments"}``, or a
    list of them), as the canonical JSON list of ``{"name", "arguments"}``."""
    calls = _json_value(value, where)
    calls = calls if isinstance(calls, list) else [calls]
    if not calls:
        raise UserError(f"{where}: no tool calls in it")
    out = []
    for i, call in enumerate(calls):
        call = call.get("function", call) if isinstance(call, dict) else call
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
                or "arguments" not in call:
            raise UserError(f"{where}[{i}]: a tool call needs a 'name' and 'arguments'")
        arguments = _json_value(call["arguments"], f"{where}[{i}].arguments")
        if not isinstance(arguments, dict):
            raise UserError(f"{where}[{i}].arguments: expected a JSON object, got "
                            f"{type(arguments).__name__}")
        out.append({"name": call["name"], "arguments": arguments})
    return json.dumps(out, ensure_ascii=False)


def _tools(obj: dict, where: str) -> str:
    """The tool definitions of a record (``tools``: a list, or JSON text of one)."""
    if "tools" not in obj or obj["tools"] in (None, "", []):
        return ""
    tools = _json_value(obj["tools"], f"{where}: tools")
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UserError(f"{where}: tools: expected a list of tool definitions (JSON objects)")
    return json.dumps(tools, ensure_ascii=False) if tools else ""


def _sharegpt_turns(items, where: str, field: str) -> tuple[str, list[Turn]]:
    if not isinstance(items, list):
        raise UserError(f"{where}: {field}: expected a list of messages")
    system, turns = "", []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict):
            raise UserError(f"{where}: {field}[{i}]: expected an object with 'from' and 'value'")
        role_key = "from" if "from" in msg else "role"
        text_key = "value" if "value" in msg else "content"
        calls = msg.get("tool_calls")
        if role_key not in msg or (text_key not in msg and not calls):
            raise UserError(f"{where}: {field}[{i}]: needs 'from' and 'value' (or 'role' and "
                            "'content')")
        raw_role, text = msg[role_key], msg.get(text_key)
        if calls:  # an OpenAI assistant message that calls tools (its content may be null)
            if _SHAREGPT_ROLES.get(str(raw_role).lower()) != "assistant":
                raise UserError(f"{where}: {field}[{i}].tool_calls: only an assistant message "
                                f"calls tools, not a {raw_role!r} one")
            turns.append(Turn("assistant", text or "",
                              tool_calls=_tool_calls(calls, f"{where}: {field}[{i}].tool_calls")))
            continue
        if str(raw_role).lower() == "function_call":  # ShareGPT: the call is the value
            found = _tool_calls(text, f"{where}: {field}[{i}].{text_key}")
            if turns and turns[-1].role == "assistant" and not turns[-1].tool_calls:
                turns[-1] = replace(turns[-1], tool_calls=found)  # words, then the call
            else:
                turns.append(Turn("assistant", "", tool_calls=found))
            continue
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
    meta = {k: v for k, v in obj.items() if k not in (field, "system", "tools")}
    return Conversation(tuple(turns), system, src, line, meta, _tools(obj, where))


def conversation_from_messages(messages, tools=None, where: str = "messages") -> Conversation:
    """A prompt conversation from OpenAI chat ``messages`` (and ``tools``), as the chat
    engine receives them: it must end with a user or tool turn."""
    obj = {"messages": messages, **({"tools": tools} if tools else {})}
    conv = check_conversation(_conversation(obj, "messages", where, where, 0),
                              for_training=False)
    if conv.turns[-1].role == "assistant":
        raise UserError(f"{where}: the last message is the assistant's; end with a user (or "
                        "tool) message to get a reply")
    return conv


def _prompt_only(obj: dict, where: str, src: str, line: int) -> Prompt:
    """A prompt alone: ``prompt`` as a string (with an optional ``system``) or as chat
    messages ending with a user turn, and its reference answer, the first of
    ``REFERENCE_FIELDS`` it has that is not null; other fields are kept as the record's
    metadata."""
    if "prompt" not in obj:
        raise UserError(f"{where}: prompt: missing (a prompt record needs 'prompt': a string "
                        "or chat messages)")
    field = next((f for f in REFERENCE_FIELDS if obj.get(f) is not None), None)
    reference = "" if field is None else obj[field]
    if not isinstance(reference, str):
        if not isinstance(reference, int | float) or isinstance(reference, bool):
            raise UserError(f"{where}: {field}: expected the reference answer as a string, "
                            f"got {type(reference).__name__}")
        reference = str(reference)
    rest = {k: v for k, v in obj.items() if k != field}
    if isinstance(obj["prompt"], list):
        prompt = _conversation(rest, "prompt", where, src, line)
    else:
        meta = {k: v for k, v in rest.items() if k not in ("prompt", "system")}
        prompt = Conversation((Turn("user", _str_field(obj, "prompt", where)),),
                              _str_field(obj, "system", where, False), src, line, meta)
    check_conversation(prompt, for_training=False)
    if prompt.turns[-1].role != "user":
        raise UserError(f"{where}: prompt: must end with a user turn (the question to answer); "
                        "a record with its answer is a conversation (prompt + completion)")
    return Prompt(prompt, reference)


def _preference(obj: dict, where: str, src: str, line: int) -> PreferencePair:
    """A preference pair: the prompt as ShareGPT ``conversations``, OpenAI ``messages``, an
    Alpaca ``instruction`` (+ ``input``) or a ``prompt`` (a string or messages), and the
    ``chosen`` / ``rejected`` answers (strings, or one assistant message each)."""
    rest = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
    if "conversations" in obj:
        prompt = _conversation(rest, "conversations", where, src, line)
    elif "messages" in obj or isinstance(obj.get("prompt"), list):
        field = "messages" if "messages" in obj else "prompt"
        prompt = _conversation(rest, field, where, src, line)
    elif "instruction" in obj:
        prompt = _alpaca_prompt(obj, where, src, line)
    else:
        prompt = Conversation((Turn("user", _str_field(obj, "prompt", where)),),
                              _str_field(obj, "system", where, False), src, line)
    answers = []
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise UserError(f"{where}: {key}: missing (a preference pair needs 'chosen' and "
                            "'rejected' answers)")
        value = obj[key]
        if isinstance(value, list) and len(value) == 1:  # TRL's conversational form
            value = value[0]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: {key}: expected a non-empty answer string (or a message "
                            "with 'value')")
        answers.append(value)
    if answers[0].strip() == answers[1].strip():
        raise UserError(f"{where}: chosen and rejected are the same answer; a preference pair "
                        "needs two different answers (fix or remove the record)")
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
            line=line, meta={k: v for k, v in obj.items() if k not in ("inputs", "targets")}))
    if fmt == "prompt_completion":  # (TRL's unpaired feedback: + "label")
        return check_conversation(Conversation.single(
            _str_field(obj, "prompt", where), _str_field(obj, "completion", where), source=src,
            line=line, meta={k: v for k, v in obj.items() if k not in ("prompt", "completion")}))
    if fmt == "qa":  # (GSM8K, many QA sets; GRPO asks the question, the answer is the reference)
        return check_conversation(Conversation.single(
            _str_field(obj, "question", where), _str_field(obj, "answer", where), source=src,
            line=line, meta={k: v for k, v in obj.items() if k not in ("question", "answer")}))
    if fmt == "preference":
        return _preference(obj, where, src, line)
    if fmt == "prompt":
        return _prompt_only(obj, where, src, line)
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
    record that differs. With ``skip_invalid`` a bad record (a JSON Lines line that is not
    JSON too) is left out and its message is appended to ``problems``; a JSON array that is
    not valid JSON is always an error.
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
            if isinstance(obj, UserError):
                raise obj
            found = detect_format(obj) if fmt == "auto" or detected_at else None
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


_KINDS = {Conversation: ("a conversation", "conversations (Alpaca, ShareGPT, OpenAI messages, "
                                           "Dolly, FLAN, prompt/completion, question/answer)"),
          PreferencePair: ("a preference pair", "preference pairs (a prompt with 'chosen' and "
                           "'rejected' answers)"),
          Prompt: ("a prompt without an answer", "prompts ('prompt', with an optional "
                   "reference 'answer')"),
          PlainText: ("plain text", "plain text")}


def iter_accepted(paths: list[str] | str, fmt: str = "auto", skip_invalid: bool = False,
                  problems: list[str] | None = None, accept: tuple[type, ...] = (Conversation,),
                  purpose: str = "instruction tuning") -> Iterator[Record]:
    """Stream records of the kinds in ``accept``; another kind is an error naming the record,
    what it is and what ``purpose`` needs."""
    paths = [paths] if isinstance(paths, str | Path) else paths
    for path in paths:
        for rec in iter_records(path, fmt, skip_invalid, problems):
            yield check_kind(rec, accept, purpose)


def check_kind(record: Record, accept: tuple[type, ...], purpose: str) -> Record:
    """``record``, if it is of a kind in ``accept``; else an error naming it, what it is and
    what ``purpose`` needs."""
    if not isinstance(record, accept):
        raise UserError(f"{record.where}: is {_KINDS[type(record)][0]}; {purpose} needs "
                        + " or ".join(_KINDS[k][1] for k in accept))
    return record


def iter_conversations(paths: list[str] | str, fmt: str = "auto", skip_invalid: bool = False,
                       problems: list[str] | None = None) -> Iterator[Conversation]:
    """Stream records for instruction tuning; preference pairs, prompts alone and plain text
    are refused."""
    yield from iter_accepted(paths, fmt, skip_invalid, problems)


def read_conversations(paths: list[str] | str, fmt: str = "auto", skip_invalid: bool = False,
                       problems: list[str] | None = None) -> list[Conversation]:
    """``iter_conversations`` as a list."""
    return list(iter_conversations(paths, fmt, skip_invalid, problems))


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
    if isinstance(record, Prompt):
        if fmt != "prompt":
            raise UserError(f"{where}: a prompt without an answer converts only to 'prompt'")
        single = len(record.prompt.turns) == 1 and not record.prompt.tools
        out = {"prompt": record.prompt.turns[0].user_text() if single
               else record.prompt.messages()}
        if single and record.prompt.system:
            out["system"] = record.prompt.system
        if record.prompt.tools:
            out["tools"] = record.prompt.tool_list()
        return {**out, **({"answer": record.reference} if record.reference else {})}
    conv = record
    if fmt in ("alpaca", "dolly", "flan", "prompt_completion", "qa"):
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
        if fmt == "qa":
            return {"question": last_user.user_text(), "answer": conv.answer}
        return {"prompt": last_user.user_text(), "completion": conv.answer}
    tools = {"tools": conv.tool_list()} if conv.tools else {}
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "tool": "observation"}
        msgs = [{"from": "system", "value": conv.system}] if conv.system else []
        for t in conv.turns:
            if t.content or not t.tool_calls:
                msgs.append({"from": names[t.role], "value": t.user_text()})
            if t.tool_calls:
                calls = t.calls()
                msgs.append({"from": "function_call", "value": json.dumps(
                    calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
        return {"conversations": msgs, **tools}
    if fmt == "openai":
        return {"messages": conv.messages(), **tools}
    raise UserError(f"cannot convert to '{fmt}'{did_you_mean(fmt, FORMATS)}; formats: "
                    f"{', '.join(FORMATS)}")
