"""Prompt templates: how a conversation becomes the text a model sees, and which part is trained.

Owns the template registry, rendering a ``Conversation`` into text plus the character spans of
the assistant replies (each reply with its end-of-turn marker, which is what the loss is on),
the tokenizer's own chat template as a template, and ``template.json``, which every run writes
next to its weights so that every inference path renders prompts exactly as training did.

Rendering a conversation's ``prompt()`` gives a string that is a prefix of the full rendering,
ending with the text that opens the assistant's reply: that is the inference prompt.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from unitune.data.schema import Conversation
from unitune.errors import UserError, did_you_mean

TEMPLATE_FILE = "template.json"


@dataclass(frozen=True)
class Template:
    """A chat format as format strings.

    ``system`` wraps the system prompt before the first turn, unless ``user`` has a
    ``{system}`` slot, in which case the wrapped system prompt goes inside the first user turn
    (llama-2). ``user`` / ``user_with_input`` format a user turn (``{content}``, ``{input}``,
    ``{round}`` = 1-based exchange number); ``assistant_prefix`` opens a reply (not trained; the
    inference prompt ends with it); ``answer_lead`` starts the reply text (trained, e.g. the
    space after "ASSISTANT:", so prompts never end in a space); ``assistant_suffix`` closes it
    (trained: the model must learn to stop); ``turn_sep`` comes
    after a reply (not trained). ``{eos}``/``{bos}`` are the tokenizer's tokens. ``stop`` lists
    end-of-turn strings that end generation besides EOS.
    """

    name: str
    user: str = "{content}"
    user_with_input: str = ""
    assistant_prefix: str = ""
    answer_lead: str = ""
    assistant_suffix: str = "{eos}"
    turn_sep: str = ""
    system: str = ""
    system_default: str = ""
    system_default_with_input: str = ""
    tool: str = ""
    stop: tuple[str, ...] = ()
    tokenizer_template: bool = False  # render with the tokenizer's own chat template

    def save(self, run_dir: Path) -> None:
        data = asdict(self)
        data["stop"] = list(self.stop)
        (run_dir / TEMPLATE_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False),
                                             encoding="utf-8")

    def render(self, conv: Conversation, tokenizer=None) -> tuple[str, list[tuple[int, int]]]:
        """(text, spans): the rendered conversation and the [start, end) character spans of
        every assistant reply including its end-of-turn suffix. A conversation that ends with
        a user turn renders up to and including the assistant prefix (the inference prompt).
        """
        if self.tokenizer_template:
            return _render_with_tokenizer(conv, tokenizer)
        eos = getattr(tokenizer, "eos_token", None) or ""
        bos = getattr(tokenizer, "bos_token", None) or ""
        has_input = bool(conv.turns and conv.turns[0].input)
        system = conv.system or (self.system_default_with_input if has_input
                                 and self.system_default_with_input else self.system_default)
        system_block = self.system.format(system=system) if system and self.system else ""
        inline_system = "{system}" in self.user
        parts: list[str] = [] if inline_system else [system_block]
        spans: list[tuple[int, int]] = []
        length = len(parts[0]) if parts else 0
        exchange = 0

        def add(text: str) -> None:
            nonlocal length
            parts.append(text)
            length += len(text)

        for turn in conv.turns:
            if turn.role == "user":
                exchange += 1
                if turn.input and self.user_with_input:
                    fmt, content = self.user_with_input, turn.content
                else:
                    fmt, content = self.user, turn.user_text()
                add(fmt.format(content=content, input=turn.input, round=exchange,
                               system=system_block if exchange == 1 else "", eos=eos, bos=bos))
                add(self.assistant_prefix.format(eos=eos, bos=bos))
            elif turn.role == "tool":
                add((self.tool or self.user).format(content=turn.content, input="",
                                                    round=exchange, system="", eos=eos, bos=bos))
                add(self.assistant_prefix.format(eos=eos, bos=bos))
            else:
                start = length
                add(self.answer_lead + turn.content
                    + self.assistant_suffix.format(eos=eos, bos=bos))
                spans.append((start, length))
                add(self.turn_sep.format(eos=eos, bos=bos))
        text = "".join(parts)
        if conv.turns and conv.turns[-1].role == "assistant" and self.turn_sep:
            text = text[: len(text) - len(self.turn_sep.format(eos=eos, bos=bos))]
        return text, spans

    def render_prompt(self, conv: Conversation, tokenizer=None) -> str:
        """The inference prompt: everything before the final assistant reply."""
        return self.render(conv.prompt(), tokenizer)[0]

    def stop_strings(self, tokenizer=None) -> list[str]:
        """End-of-turn markers that end generation (besides the tokenizer's EOS)."""
        eos = getattr(tokenizer, "eos_token", None) or ""
        out = [s for s in self.stop if s and s != eos]
        if self.tokenizer_template:
            return out
        suffix = self.assistant_suffix.format(eos=eos, bos="").strip()
        if suffix and suffix != eos and suffix not in out:
            out.append(suffix)
        return out


def _render_with_tokenizer(conv: Conversation, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Render with ``tokenizer.apply_chat_template``; spans found by rendering prefixes."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError("template 'tokenizer': this tokenizer has no chat_template; pick a "
                        "named template (see `unitune data templates`)")
    messages = [{"role": "system", "content": conv.system}] if conv.system else []
    spans: list[tuple[int, int]] = []
    text = ""
    for i, turn in enumerate(conv.turns):
        messages.append({"role": turn.role, "content": turn.user_text()
                         if turn.role == "user" else turn.content})
        if turn.role == "assistant":
            before = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                                   add_generation_prompt=True)
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            if not text.startswith(before):
                raise UserError(f"template 'tokenizer': the chat template of this tokenizer is "
                                f"not prefix-stable at turn {i}; use a named template")
            end = text.rfind(turn.content) + len(turn.content)
            # the end-of-turn marker right after the reply is trained too
            tail = text[end:]
            eot = tail[: len(tail) - len(tail.lstrip("\n"))] if not tail.strip() else \
                tail.split("\n", 1)[0]
            spans.append((len(before), end + len(eot)))
    if not conv.turns or conv.turns[-1].role != "assistant":
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, spans


_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's "
                  "questions.")
_ALPACA = "Below is an instruction that describes a task"
_VICUNA = Template(name="vicuna", system="{system} ", system_default=_VICUNA_SYSTEM,
                   user="USER: {content} ", assistant_prefix="ASSISTANT:", answer_lead=" ")
_CHATML = Template(name="chatml", system="<|im_start|>system\n{system}<|im_end|>\n",
                   user="<|im_start|>user\n{content}<|im_end|>\n",
                   assistant_prefix="<|im_start|>assistant\n", assistant_suffix="<|im_end|>",
                   turn_sep="\n", tool="<|im_start|>tool\n{content}<|im_end|>\n",
                   stop=("<|im_end|>",))

TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template(
        name="alpaca", system="{system}\n\n",
        system_default=(f"{_ALPACA}. Write a response that appropriately completes the "
                        "request."),
        system_default_with_input=(f"{_ALPACA}, paired with an input that provides further "
                                   "context. Write a response that appropriately completes "
                                   "the request."),
        user="### Instruction:\n{content}\n\n",
        user_with_input="### Instruction:\n{content}\n\n### Input:\n{input}\n\n",
        assistant_prefix="### Response:\n", turn_sep="\n\n"),
    _VICUNA,
    replace(_VICUNA, name="flacuna"),
    Template(name="llama-2-chat", system="<<SYS>>\n{system}\n<</SYS>>\n\n",
             user="[INST] {system}{content} [/INST]", answer_lead=" ",
             assistant_suffix=" {eos}", turn_sep="{bos}"),
    Template(name="llama-3",
             system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
             user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
             assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
             assistant_suffix="<|eot_id|>", stop=("<|eot_id|>",)),
    _CHATML,
    replace(_CHATML, name="qwen", system_default="You are a helpful assistant."),
    Template(name="chatglm2", system="{system}\n\n", user="[Round {round}]\n\n问：{content}\n\n",
             assistant_prefix="答：", turn_sep="\n\n"),
    Template(name="chatglm3", system="<|system|>\n{system}", user="<|user|>\n{content}",
             assistant_prefix="<|assistant|>\n", tool="<|observation|>\n{content}",
             stop=("<|user|>", "<|observation|>")),
    Template(name="baichuan", system="{system}", user="<reserved_102>{content}",
             assistant_prefix="<reserved_103>"),
    Template(name="baichuan2", system="{system}", user="<reserved_106>{content}",
             assistant_prefix="<reserved_107>"),
    Template(name="internlm", system="<|System|>:{system}\n", user="<|User|>:{content}<eoh>\n",
             assistant_prefix="<|Bot|>:", assistant_suffix="<eoa>\n", stop=("<eoa>",)),
    Template(name="moss", system="{system}\n",
             system_default="You are an AI assistant whose name is MOSS.",
             user="<|Human|>: {content}<eoh>\n", assistant_prefix="<|MOSS|>:", answer_lead=" ",
             assistant_suffix="<eom>\n", stop=("<eom>",)),
    Template(name="bloom", system="{system}\n", user="{content}", assistant_prefix="\n"),
    # no wrapping: the instruction and a newline (pre-training on prompt/completion pairs)
    Template(name="raw", user="{content}\n", user_with_input="{content}\n{input}\n"),
    Template(name="tokenizer", tokenizer_template=True),
]}

TEMPLATE_NOTES = {
    "alpaca": "Stanford Alpaca (with and without input)",
    "vicuna": "Vicuna v1.1 (FastChat)",
    "flacuna": "Flacuna = the Vicuna v1.1 conversation format",
    "llama-2-chat": "Llama-2-chat [INST] with <<SYS>> system prompt",
    "llama-3": "Llama-3 instruct header tokens",
    "chatml": "ChatML (<|im_start|>/<|im_end|>)",
    "qwen": "Qwen/Qwen2 (ChatML with the default system prompt)",
    "chatglm2": "ChatGLM2 [Round n] 问/答",
    "chatglm3": "ChatGLM3 <|user|>/<|assistant|>",
    "baichuan": "Baichuan-13B-chat <reserved_102>/<reserved_103>",
    "baichuan2": "Baichuan2-chat <reserved_106>/<reserved_107>",
    "internlm": "InternLM-chat <|User|>/<|Bot|> with <eoh>/<eoa>",
    "moss": "MOSS <|Human|>/<|MOSS|> with <eoh>/<eom>",
    "bloom": "BLOOM/BLOOMZ: the plain prompt, the answer after a newline",
    "raw": "no template: instruction (+ input) and a newline; for completion pre-training",
    "tokenizer": "the tokenizer's own chat_template (apply_chat_template)",
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UserError(f"unknown template '{name}'{did_you_mean(name, TEMPLATES)}; "
                        f"available: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def load_template(run_dir: Path) -> Template:
    """The template a run was trained with (read from its ``template.json``)."""
    path = Path(run_dir) / TEMPLATE_FILE
    if not path.exists():
        raise UserError(f"{path}: no template file; is {run_dir} a unitune run folder?")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["stop"] = tuple(data.get("stop", ()))
    return Template(**data)
