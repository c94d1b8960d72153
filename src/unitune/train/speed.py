"""The training fast path: which kernels, attention and checkpointing a model gets.

Owns deciding, from the config and what the machine has, the optimizations a base model gets
before its adapter is added, and naming them for the run's log and ``run.json``:

- liger-kernel's fused RMSNorm, RoPE, SwiGLU and linear + cross-entropy (which never
  materialises the full-vocabulary logits), on CUDA for the architectures liger supports
  (applied by the Trainer, ``use_liger_kernel``);
- the attention implementation: PyTorch's FlexAttention for packed rows on a GPU, where
  transformers turns the restarting position ids into a block-sparse document mask (only the
  blocks on the diagonal are computed; SDPA would need a dense ``rows x n x n`` mask and lose
  its flash kernel), SDPA otherwise;
- activation checkpointing (``train/checkpointing.py``), optionally offloaded to host memory;
- once the adapter is added, leaner LoRA layers: they read their 16-bit input as it is (PEFT
  keeps adapter weights in fp32 and casts each adapted layer's input to fp32 first; under the
  Trainer's bf16/fp16 autocast the adapter's matmul runs in 16 bits anyway, so that copy only
  costs time and memory: the matmul saves its own 16-bit copy of the input for the backward
  pass instead of sharing the base layer's; the results are bit-identical), and their
  dropout keeps no dropped copy of the input (``methods/lean_dropout.py``; the same mask
  distribution, drawn from its own seeds, on the CPU too).

Everything falls back to the stock transformers modules where a piece does not apply (the
CPU, other architectures, liger not installed); ``kernels: none`` keeps PEFT's own LoRA layers
too.
"""

from __future__ import annotations

from unitune.errors import UserError
from unitune.methods import lean_dropout
from unitune.train import checkpointing

LIGER_ARCHS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}
LIGER = "liger: rms_norm, rope, swiglu, fused linear cross-entropy"


def _device_type(model) -> str:
    return next(model.parameters()).device.type


def liger_applies(model) -> bool:
    """Whether liger-kernel's fused kernels apply to ``model`` (CUDA, a supported architecture,
    liger installed). The Trainer applies them (``use_liger_kernel``)."""
    model_type = getattr(model.config, "model_type", None)
    if _device_type(model) != "cuda" or model_type not in LIGER_ARCHS:
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def set_attention(model, setting: str, packing: bool) -> str:
    """Switch ``model`` to the attention ``setting`` asks for ('auto': FlexAttention for packed
    rows on a GPU when the model supports it, else what it was loaded with); returns it."""
    on_gpu = _device_type(model) == "cuda"
    current = model.config._attn_implementation
    auto = setting == "auto"
    if auto:
        flex = packing and on_gpu and getattr(model, "_supports_flex_attn", False)
        setting = "flex_attention" if flex else current
    elif setting == "flex_attention" and not on_gpu:
        raise UserError("attention=flex_attention trains only on a GPU (PyTorch's "
                        "FlexAttention has no backward pass on the CPU); use attention=auto")
    if setting != current:
        try:
            model.set_attn_implementation(setting)
        except (ValueError, ImportError) as exc:
            reason = str(exc).splitlines()[0]
            if auto:  # this torch or model cannot: keep what the model was loaded with
                return f"attention: {current} ({setting} unavailable: {reason})"
            raise UserError(f"attention={setting}: {reason}") from None
    if setting == "flex_attention" and packing:
        return "attention: flex_attention (block-sparse mask per packed example)"
    return f"attention: {setting}"


def optimize(model, kernels: str, attention: str, gradient_checkpointing: bool | int,
             offload_activations: bool, packing: bool) -> list[str]:
    """Apply every optimization the settings allow to ``model`` (a base model, before its
    adapter); returns what is active, in the order ``unitune train`` prints it. liger's
    kernels are listed here and applied by the Trainer (see ``liger_applies``)."""
    active = [LIGER] if kernels == "auto" and liger_applies(model) else []
    active.append(set_attention(model, attention, packing))
    ckpt = checkpointing.enable(model, gradient_checkpointing, offload_activations)
    active += [ckpt] if ckpt else []
    return active + (["packing"] if packing else [])


def lora_inputs_as_is(model, dtype) -> str | None:
    """For a model trained in 16 bits under autocast: PEFT's LoRA layers stop casting their
    input to their fp32 weights' dtype (``cast_input_dtype_enabled``, PEFT's own switch);
    returns what is active, or None when nothing applies."""
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return None
    layers = lean_dropout.plain_lora_layers(model)  # DoRA's, AdaLoRA's keep PEFT's cast
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return f"LoRA layers read their {str(dtype).removeprefix('torch.')} inputs as they are" \
        if layers else None


def optimize_adapter(model, dtype, kernels: str) -> list[str]:
    """The leaner LoRA layers (``kernels: auto``), once the adapter is on ``model``; returns
    what is active."""
    if kernels != "auto":
        return []
    as_is = lora_inputs_as_is(model, dtype)
    active = [as_is] if as_is else []
    if lean_dropout.apply(model):
        active.append("LoRA dropout inside lora_A (no dropped copy kept)")
    return active
