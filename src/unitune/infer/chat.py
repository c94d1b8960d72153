"""``unitune chat``: a multi-turn conversation in the terminal over the chat engine.

The history is a list of chat messages rendered through the served model's template at every
turn; replies stream as they are generated. Commands: ``/reset``, ``/system TEXT``,
``/model NAME`` (switch adapter), ``/set KEY=VALUE`` (a decoding control), ``/models``,
``/settings``, ``/help``, ``/quit``. Ctrl-C stops a reply (the session goes on; the partial
reply is not kept); Ctrl-D or ``/quit`` ends the session.
"""

from __future__ import annotations

import dataclasses
import sys

from unitune.errors import UserError, did_you_mean
from unitune.infer.engine import Engine, Request
from unitune.infer.generate import Decoding

HELP = """commands:
  /reset              forget the conversation
  /system TEXT        set the system prompt (and reset); /system alone clears it
  /model NAME         talk to another served model or adapter (/models lists them)
  /set KEY=VALUE      a decoding control: max_new_tokens, temperature, top_p, top_k, min_p,
                      repetition_penalty, no_repeat_ngram_size, do_sample, seed
  /settings           show the decoding controls
  /quit               leave (Ctrl-D too); Ctrl-C stops a reply"""


class ChatSession:
    def __init__(self, engine: Engine, model: str, decoding: Decoding, system: str = "",
                 out=sys.stdout):
        self.engine, self.model, self.decoding, self.system = engine, model, decoding, system
        self.out = out
        self.history: list[dict] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def command(self, line: str) -> bool:
        """Run a /command; False when the session should end."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit"):
            return False
        if name == "reset":
            self.history = []
            self.say("(conversation cleared)")
        elif name == "system":
            self.system, self.history = arg, []
            self.say(f"(system prompt {'set' if arg else 'cleared'}; conversation cleared)")
        elif name == "model":
            self.engine.template(arg)  # an unknown name is a UserError
            self.model, self.history = arg, []
            self.say(f"(now talking to {arg}; conversation cleared)")
        elif name == "models":
            for m in self.engine.models():
                mark = "*" if m["id"] == self.model else " "
                self.say(f" {mark} {m['id']}" + (f"  (adapter of {m['parent']})"
                                                   if m["parent"] else ""))
        elif name == "set":
            self.decoding = set_control(self.decoding, arg)
            self.say(f"({arg})")
        elif name == "settings":
            self.say(", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.decoding).items()))
        elif name == "help":
            self.say(HELP)
        else:
            known = ["reset", "system", "model", "models", "set", "settings", "help", "quit"]
            self.say(f"unknown command /{name}{did_you_mean(name, known)}; /help lists them")
        return True

    def reply(self, text: str) -> None:
        """Send one user message and stream the reply; Ctrl-C stops it."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            self.history + [{"role": "user", "content": text}]
        prompt = self.engine.render_chat(self.model, messages)
        job = self.engine.submit(Request(self.model, prompt, self.decoding, stream=True))
        parts = []
        try:
            for event in job.events():
                if event[0] == "text":
                    parts.append(event[2])
                    self.out.write(event[2])
                    self.out.flush()
        except KeyboardInterrupt:
            job.cancel()
            self.say("\n(stopped)")
            return
        self.say("")
        self.history += [{"role": "user", "content": text},
                         {"role": "assistant", "content": "".join(parts).strip()}]

    def run(self, read=input) -> None:
        self.say(f"chatting with {self.model} (/help for commands, Ctrl-D to leave)")
        while True:
            try:
                line = read("> ")
            except EOFError:
                self.say("")
                return
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /quit to leave)")
                continue
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        return
                else:
                    self.reply(line)
            except UserError as exc:
                self.say(f"error: {exc}")


def set_control(decoding: Decoding, assignment: str) -> Decoding:
    """``decoding`` with one control changed by ``KEY=VALUE``."""
    key, sep, value = assignment.partition("=")
    key = key.strip()
    fields = {f.name: f for f in dataclasses.fields(Decoding)}
    if not sep or key not in fields:
        raise UserError(f"/set {assignment!r}: expected KEY=VALUE with KEY one of "
                        f"{', '.join(fields)}{did_you_mean(key, fields)}")
    current = getattr(decoding, key)
    try:
        if isinstance(current, bool):
            words = {"1": True, "true": True, "yes": True, "on": True, "0": False,
                     "false": False, "no": False, "off": False}
            parsed = words[value.strip().lower()]
        elif isinstance(current, int) or key == "seed":
            parsed = int(value)
        else:
            parsed = float(value)
    except (ValueError, KeyError):
        raise UserError(f"/set {key}: {value!r} is not a {type(current).__name__}") from None
    return dataclasses.replace(decoding, **{key: parsed})
