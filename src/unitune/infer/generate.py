"""Generation: render prompts with the run's template, decode in batches, return the answers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unitune.data.templates import Template


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

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
              "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


@torch.inference_mode()
def generate_texts(model, tokenizer, prompts: list[str], decoding: Decoding,
                   batch_size: int = 32) -> list[str]:
    """Answers to already-rendered prompts, in input order (left-padded batches)."""
    answers: list[str] = []
    device = next(model.parameters()).device
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(decoding.seed)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, **decoding.generate_kwargs(),
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new,
                                                                      skip_special_tokens=True))
    finally:
        tokenizer.padding_side = saved_side
    return answers


def answer(model, tokenizer, template: Template, instructions: list[tuple[str, str]],
           decoding: Decoding, batch_size: int = 32) -> list[str]:
    """Answers to (instruction, input) pairs rendered through ``template``."""
    prompts = [template.render_prompt(ins, inp) for ins, inp in instructions]
    return generate_texts(model, tokenizer, prompts, decoding, batch_size)
