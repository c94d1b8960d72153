"""Prompt templates: how an instruction record becomes the text a model sees.

Owns the template registry and the ``template.json`` file that every run writes next to its
adapter, so inference always renders prompts exactly as training did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from unitune.errors import UserError, did_you_mean

TEMPLATE_FILE = "template.json"


@dataclass(frozen=True)
class Template:
    """A single-turn prompt format; the response follows the prompt and ends with EOS."""

    name: str
    prompt_with_input: str
    prompt_no_input: str

    def render_prompt(self, instruction: str, input: str = "") -> str:
        if input:
            return self.prompt_with_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def save(self, run_dir: Path) -> None:
        (run_dir / TEMPLATE_FILE).write_text(json.dumps(asdict(self), indent=1,
                                                        ensure_ascii=False), encoding="utf-8")


TEMPLATES: dict[str, Template] = {
    "alpaca": Template(
        name="alpaca",
        prompt_with_input=(
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
        prompt_no_input=(
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    ),
    # no wrapping at all: the prompt is the instruction followed by a newline (pre-training on
    # prompt/completion pairs, e.g. the tiny base's raw task corpus).
    "raw": Template(name="raw", prompt_with_input="{instruction}\n{input}\n",
                    prompt_no_input="{instruction}\n"),
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
    return Template(**data)
