"""LoRA dropout that keeps no dropped copy of the input for the backward pass.

PEFT computes an adapter's update as ``lora_B(lora_A(dropout(x)))``: the dropped input is a
new tensor as large as ``x``, and ``lora_A``'s matmul keeps it for the backward pass (and the
dropout its mask), for each of the seven projections of every layer: 84 KiB per token and layer
for an 8B model, half again the activations of the layer itself (benchmarks/activation_memory.py).
Here the dropout and ``lora_A`` are one autograd function that keeps only ``x`` (which the base
layer keeps anyway) and a seed, and the backward pass draws the same mask again from the seed.

The mask has the distribution of ``nn.Dropout``'s; the seed comes from the CPU generator, which
activation checkpointing restores before it recomputes a layer, so a recomputed forward pass
draws the same masks. Only ``lora_A``'s forward pass and the dropout module change: the weights,
their names and the saved adapter are PEFT's.
"""

from __future__ import annotations

import torch
from torch import nn


def dropout_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x``-shaped: 0 with probability ``p``, else 1; the same for the same seed."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return torch.empty_like(x).bernoulli_(1 - p, generator=generator)


def _masked(t: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    # kept values scaled by 1 / (1 - p) in one rounding (a Python scale, so a 16-bit tensor
    # is scaled in fp32 arithmetic, as nn.Dropout does)
    return (t * mask) * (1 / (1 - p))


def dropped(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x`` after dropout with the mask of ``seed``."""
    return _masked(x, dropout_mask(x, p, seed), p)


class _DropoutLinear(torch.autograd.Function):
    """``(x * mask) @ weight.T`` computed in ``x``'s dtype (as autocast would), keeping ``x``."""

    @staticmethod
    def forward(ctx, x, weight, p: float, seed: int):
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        return dropped(x, p, seed) @ weight.to(x.dtype).t()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p, seed = ctx.p, ctx.seed
        grad = grad.to(x.dtype)
        mask = dropout_mask(x, p, seed)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _masked(grad @ weight.to(x.dtype), mask, p)
        if ctx.needs_input_grad[1]:
            inputs = _masked(x, mask, p).reshape(-1, x.shape[-1])
            grad_w = (grad.reshape(-1, grad.shape[-1]).t() @ inputs).to(weight.dtype)
        return grad_x, grad_w, None, None


class DropoutLinear(nn.Linear):
    """PEFT's ``lora_A`` with the adapter's dropout inside (the class is swapped in place)."""

    p: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        seed = int(torch.randint(0, 2**62, (1,)).item())  # CPU generator: no device sync
        return _DropoutLinear.apply(x, self.weight, self.p, seed)


def plain_lora_layers(model) -> list:
    """PEFT's LoRA layers of ``model`` that run the vanilla forward pass (rsLoRA included):
    DoRA's and AdaLoRA's layers have their own."""
    from peft.tuners.adalora import AdaLoraLayer
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)
            and not isinstance(m, AdaLoraLayer) and not getattr(m, "lora_variant", None)]


def apply(model) -> int:
    """Fuse the dropout into ``lora_A`` in every plain LoRA layer of ``model`` that has one;
    returns how many adapters changed."""
    changed = 0
    for module in plain_lora_layers(model):
        for name, lora_a in module.lora_A.items():
            dropout = module.lora_dropout[name]
            if isinstance(dropout, nn.Dropout) and type(lora_a) is nn.Linear \
                    and lora_a.bias is None:
                lora_a.__class__ = DropoutLinear
                lora_a.p = dropout.p
                module.lora_dropout[name] = nn.Identity()
                changed += 1
    return changed
