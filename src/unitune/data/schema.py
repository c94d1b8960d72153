"""The one internal record format every reader produces and every later stage consumes.

A ``Conversation`` is an optional system prompt, the tools it may call (JSON schemas, as
OpenAI and ShareGPT-style data carry them), and a list of turns (user / assistant, plus tool
turns with tool results; an assistant turn may call tools); a single-turn Alpaca record is the
special case of one
user turn (instruction, with an optional ``input`` kept apart for templates that show it) and
one assistant turn. ``PreferencePair`` (a prompt conversation, chosen and rejected answers) and
``PlainText`` (pre-training text) are the other two kinds. Every record knows where it came
from (``source``, ``line``) so that any later error can point at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from unitune.errors import UserError

ROLES = ("user", "assistant", "tool")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    input: str = ""  # Alpaca-style context of a user turn; templates without a slot append it
    tool_calls: str = ""  # an assistant turn's calls: a JSON list of {"name", "arguments"}

    def user_text(self) -> str:
        """The user's words with the input appended (for templates with no input slot)."""
        return f"{self.content}\n\n{self.input}" if self.input else self.content

    def calls(self) -> list[dict]:
        return json.loads(self.tool_calls) if self.tool_calls else []


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    system: str = ""
    source: str = "<memory>"
    line: int = 0
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    tools: str = ""  # the tools it may call: a JSON list of tool schemas

    def tool_list(self) -> list[dict]:
        return json.loads(self.tools) if self.tools else []

    def messages(self) -> list[dict]:
        """The conversation as chat messages, as OpenAI's API and ``apply_chat_template``
        take them: a user turn's input appended to its words, calls as ``tool_calls``."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for t in self.turns:
            message = {"role": t.role, "content": t.user_text()}
            if t.tool_calls:
                message["tool_calls"] = [{"type": "function", "function": c} for c in t.calls()]
            messages.append(message)
        return messages

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @classmethod
    def single(cls, instruction: str, output: str, input: str = "", system: str = "",
               source: str = "<memory>", line: int = 0, meta: dict | None = None):
        return cls((Turn("user", instruction, input), Turn("assistant", output)), system, source,
                   line, meta or {})

    @property
    def is_single_turn(self) -> bool:
        return len(self.turns) == 2 and self.turns[0].role == "user"

    @property
    def answer(self) -> str:
        """The final assistant reply (the reference answer of a single-turn example)."""
        return self.turns[-1].content if self.turns and self.turns[-1].role == "assistant" \
            else ""

    def with_reply(self, reply: str) -> Conversation:
        """The conversation with ``reply`` as a final assistant turn."""
        return replace(self, turns=self.turns + (Turn("assistant", reply),))

    def prompt(self) -> Conversation:
        """The conversation without its final assistant turn (what a model is asked)."""
        if self.turns and self.turns[-1].role == "assistant":
            return replace(self, turns=self.turns[:-1])
        return self


@dataclass(frozen=True)
class PreferencePair:
    prompt: Conversation  # ends with a user turn
    chosen: str
    rejected: str

    @property
    def where(self) -> str:
        return self.prompt.where


@dataclass(frozen=True)
class Prompt:
    """A question with no answer to train on (what GRPO and RLOO sample answers to), and a
    reference answer that rewards may check against (empty when there is none)."""

    prompt: Conversation  # ends with a user turn
    reference: str = ""

    @property
    def where(self) -> str:
        return self.prompt.where


def conversation_of(record: Conversation | PreferencePair | Prompt) -> Conversation:
    """A record's conversation: itself, or a pair's or a prompt's prompt."""
    return record if isinstance(record, Conversation) else record.prompt


@dataclass(frozen=True)
class PlainText:
    text: str
    source: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def check_conversation(conv: Conversation, for_training: bool = True) -> Conversation:
    """Raise ``UserError`` (``file:line: turns[i].field: problem``) unless ``conv`` is usable.

    Rules: at least one turn; roles are user/assistant/tool; the first turn is the user's;
    user and assistant alternate (tool turns, the results of an assistant turn's calls, follow
    it and are followed by an assistant turn); contents are non-empty strings (an assistant
    turn that calls tools may have none; outside training an earlier reply may be empty, as a
    model's reply in a chat can be); for training, the last turn is the assistant's.
    """
    where = conv.where
    if not conv.turns:
        raise UserError(f"{where}: turns: empty conversation")
    previous = None
    for i, turn in enumerate(conv.turns):
        if turn.role not in ROLES:
            raise UserError(f"{where}: turns[{i}].role: unknown role {turn.role!r} "
                            f"(expected one of {', '.join(ROLES)})")
        if not isinstance(turn.content, str):
            raise UserError(f"{where}: turns[{i}].content: expected a string, got "
                            f"{type(turn.content).__name__}")
        if not turn.content.strip() and not turn.tool_calls and \
                (for_training or turn.role != "assistant"):
            what = "answer" if turn.role == "assistant" else "message"
            raise UserError(f"{where}: turns[{i}].content: empty {turn.role} {what}")
        if i == 0 and turn.role != "user":
            raise UserError(f"{where}: turns[0].role: a conversation must start with a user "
                            f"turn, not {turn.role!r}")
        if previous is not None:
            allowed = {"user": ("assistant",), "assistant": ("user", "tool"),
                       "tool": ("tool", "assistant")}[previous]
            if turn.role not in allowed:
                raise UserError(f"{where}: turns[{i}].role: {turn.role!r} after "
                                f"{previous!r}; roles out of order (expected "
                                f"{' or '.join(allowed)})")
            if turn.role == "tool" and previous == "assistant" and \
                    not conv.turns[i - 1].tool_calls:
                raise UserError(f"{where}: turns[{i}]: a tool result after an assistant turn "
                                "that calls no tool")
        previous = turn.role
    if for_training and conv.turns[-1].role != "assistant":
        raise UserError(f"{where}: turns[{len(conv.turns) - 1}]: the conversation ends with a "
                        f"{conv.turns[-1].role} turn; a training example must end with the "
                        "assistant's answer")
    return conv
