"""Model families: what unitune assumes about an architecture it has not been told about.

Owns the default prompt template per ``config.model_type``. A tokenizer that carries its own
chat template (an instruction-tuned checkpoint) is rendered with it; a base model gets its
family's template, and anything else the Alpaca template.
"""

from __future__ import annotations

DEFAULT_TEMPLATES: dict[str, str] = {
    "llama": "alpaca",
    "mistral": "llama-2-chat",
    "qwen2": "qwen",
    "qwen3": "qwen",
    "chatglm": "chatglm3",
    "baichuan": "baichuan2",
    "internlm": "internlm",
    "internlm2": "chatml",
    "bloom": "bloom",
    "moss": "moss",
}


def default_template(model_type: str | None, tokenizer) -> str:
    """The template name to use when a config says ``template: auto``."""
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    return DEFAULT_TEMPLATES.get(model_type or "", "alpaca")
