"""Model families: what unitune assumes about an architecture it has not been told about.

Owns, per ``config.model_type``: the attention and MLP projection names (LoRA / IA3 targets),
the MLP block and its output projection (bottleneck adapters), the layer list (freezing), and
the default prompt template. A tokenizer that carries its own chat template is rendered with
it; a base model gets its family's template, and anything else the Alpaca template.
"""

from __future__ import annotations

from dataclasses import dataclass

from unitune.errors import UserError


@dataclass(frozen=True)
class Family:
    attention: tuple[str, ...]  # projections inside attention (the last one is its output)
    mlp: tuple[str, ...]  # projections inside the MLP (the last one is its output)
    mlp_block: str = "mlp"  # the MLP module (parallel adapters sit beside it)
    template: str = "alpaca"
    layers: str = "model.layers"  # the ModuleList of decoder blocks
    prefix_ok: bool = True  # prefix tuning supported (past-key-value injection)

    @property
    def linear(self) -> tuple[str, ...]:
        return self.attention + self.mlp


_LLAMA = Family(("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"))
_NEOX = Family(("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"),
               layers="gpt_neox.layers")

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": Family(_LLAMA.attention, _LLAMA.mlp, template="llama-2-chat"),
    "qwen2": Family(_LLAMA.attention, _LLAMA.mlp, template="qwen"),
    "qwen3": Family(_LLAMA.attention, _LLAMA.mlp, template="qwen"),
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "internlm": Family(_LLAMA.attention, _LLAMA.mlp, template="internlm"),
    "internlm2": Family(("wqkv", "wo"), ("w1", "w3", "w2"), mlp_block="feed_forward",
                        template="chatml"),
    "baichuan": Family(("W_pack", "o_proj"), _LLAMA.mlp, template="baichuan2"),
    "chatglm": Family(("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"),
                      template="chatglm3", layers="transformer.encoder.layers",
                      prefix_ok=False),
    "bloom": Family(("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"),
                    template="bloom", layers="transformer.h"),
    "moss": Family(("qkv_proj", "out_proj"), ("fc_in", "fc_out"), template="moss",
                   layers="transformer.h"),
    "gpt2": Family(("c_attn", "attn.c_proj"), ("c_fc", "mlp.c_proj"), layers="transformer.h"),
    "gpt_neox": _NEOX,
    "t5": Family(("q", "k", "v", "o"), ("wi", "wi_0", "wi_1", "wo"),
                 mlp_block="DenseReluDense", layers="encoder.block"),
}


def family_of(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")


def require_family(model_type: str | None, what: str) -> Family:
    family = family_of(model_type)
    if family is None:
        raise UserError(f"unknown architecture '{model_type}': unitune has no default {what} "
                        f"for it; set them explicitly (known: {', '.join(FAMILIES)})")
    return family


def default_template(model_type: str | None, tokenizer) -> str:
    """The template name to use when a config says ``template: auto``."""
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    family = family_of(model_type)
    return family.template if family else "alpaca"
