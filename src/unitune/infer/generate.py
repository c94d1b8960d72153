"""Generation: render prompts with the run's template, decode in batches, return the answers.

Prompts are tokenised exactly as in training (special tokens added only where the template
leaves them to the tokenizer). Generation stops, through transformers' own stopping, at the
union of the model's ``generation_config`` EOS ids, the tokenizer's EOS and the template's
end-of-turn markers (a marker that is one token joins the EOS ids, a longer one is a stop
string); a stop string that ends an answer is not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unitune.data.encode import encoder_ids, tokenize_ids
from unitune.data.schema import Conversation
from unitune.data.templates import Template
from unitune.errors import UserError


@dataclass(frozen=True)
class Decoding:
    """Decoding controls. Greedy by default; ``do_sample`` enables temperature/top-p/top-k."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")

    def generation_config(self, eos_token_id: list[int], pad_token_id: int):
        """These controls as transformers' ``GenerationConfig``."""
        from transformers import GenerationConfig

        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} \
            if self.do_sample else {"temperature": None, "top_p": None, "top_k": None}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                repetition_penalty=self.repetition_penalty,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                **sampling)


def eos_ids(model, tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(the token ids that end generation, the stop strings longer than one token)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    strings = []
    for stop in stops:
        pieces = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.append(pieces[0])
        else:
            strings.append(stop)
    return list(dict.fromkeys(ids)), strings


def _without_stop(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop in text:
            text = text[: text.index(stop)]
    return text.strip()


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: list[str], decoding: Decoding,
                   batch_size: int = 32, stops: list[str] | None = None,
                   add_special_tokens: bool = True) -> list[str]:
    """Answers to already-rendered prompts, in input order (left-padded batches)."""
    stops = stops or []
    stop_ids, strings = eos_ids(model, tokenizer, stops)
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    tokenize = encoder_ids if seq2seq else tokenize_ids  # (exactly as in training)
    config = decoding.generation_config(stop_ids, tokenizer.pad_token_id)
    if strings:
        config.stop_strings = strings
    answers: list[str] = []
    device = next(model.parameters()).device
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(decoding.seed)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer.pad({"input_ids": tokenize(chunk, tokenizer, add_special_tokens)},
                                padding=True, return_tensors="pt").to(device)
            out = model.generate(**enc, generation_config=config,
                                 tokenizer=tokenizer if strings else None)
            # a decoder-only model returns prompt + answer; an encoder-decoder only the answer
            new = out if seq2seq else out[:, enc["input_ids"].shape[1]:]
            answers.extend(_without_stop(t, stops) for t in tokenizer.batch_decode(
                new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = saved_side
    return answers


def answer(model, tokenizer, template: Template, conversations: list[Conversation],
           decoding: Decoding, batch_size: int = 32) -> list[str]:
    """The next assistant reply to each conversation (a final assistant turn, if present, is
    the reference and is left out), rendered through ``template``."""
    prompts = [template.render_prompt(c, tokenizer) for c in conversations]
    return generate_texts(model, tokenizer, prompts, decoding, batch_size,
                          template.stop_strings(tokenizer), template.add_special_tokens)
