"""GPU kernels for training, from maintained libraries, chosen automatically where they apply.

Owns deciding which optimizations a model gets: liger-kernel's fused RMSNorm, RoPE, SwiGLU
and linear + cross-entropy (which never materialises the full-vocabulary logits) on CUDA for
the architectures liger supports. Everything else (the CPU, other architectures, liger not
installed) trains with the stock transformers modules; nothing here changes numerics on CPU.
"""

from __future__ import annotations

LIGER_ARCHS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}


def apply_kernels(model) -> list[str]:
    """Patch ``model`` in place with the kernels that apply; returns their names."""
    import torch

    model_type = getattr(model.config, "model_type", None)
    if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda" \
            or model_type not in LIGER_ARCHS:
        return []
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return []
    _apply_liger_kernel_to_instance(model=model)
    return ["liger: rms_norm, rope, swiglu, fused linear cross-entropy"]
