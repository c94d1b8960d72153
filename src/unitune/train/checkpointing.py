"""Activation checkpointing: every decoder layer, none, or only the first N (selective),
optionally offloaded to host memory.

Checkpointing a layer keeps only its input and recomputes the layer in the backward pass: a
third more compute for a fraction of the memory. Checkpointing N of the L layers sits in
between (as NeMo's ``activations_checkpoint_num_layers``): the other L - N layers keep their
activations and skip the recompute, so a GPU with memory to spare trains faster. transformers
checkpoints per layer (``GradientCheckpointingLayer.gradient_checkpointing``); this module
turns it on for the whole model and then off again for the layers after the first N. (Recent
transformers can checkpoint every n-th layer; a count works with any transformers >= 4.52,
such as the one on the GPU machine, and at any granularity.)

Offloading moves what a checkpointed layer keeps (its input: ``tokens x hidden`` values per
layer, 64 MiB for an 8B model at 8,192 tokens) to pinned host memory in the forward pass and
back in the backward pass (``torch.autograd.graph.save_on_cpu``), so the GPU holds the
activations of only the layer being recomputed: the low-memory mode, at the price of a copy
each way per layer.
"""

from __future__ import annotations

import functools

from unitune.errors import UserError


def checkpointed_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def check(setting: bool | int, offload: bool) -> None:
    """Refuse settings that contradict each other, before any data or weights load."""
    if offload and (setting is False or setting == 0):
        raise UserError("offload_activations=true offloads what checkpointed layers keep: "
                        "set gradient_checkpointing=true (or N) too")


def offloaded(checkpoint_func, device_type: str):
    """``checkpoint_func`` with what it saves for the backward pass kept in pinned host memory
    (non-reentrant checkpointing saves a layer's inputs through the autograd saved-tensor
    hooks, which ``save_on_cpu`` replaces)."""
    import torch

    pin = device_type != "cpu"  # (a CPU model's activations are on the host already)

    @functools.wraps(checkpoint_func)
    def run(function, *args, **kwargs):
        with torch.autograd.graph.save_on_cpu(pin_memory=pin, device_type=device_type):
            return checkpoint_func(function, *args, **kwargs)

    return run


def enable(model, setting: bool | int, offload: bool = False) -> str | None:
    """Turn checkpointing on as ``setting`` says (True: every layer; N: the first N layers),
    with the saved layer inputs in host memory if ``offload``, before an adapter is added;
    returns what is active, for the run's optimizations list. Nothing may re-enable it
    afterwards (PEFT's k-bit preparation is told not to)."""
    check(setting, offload)
    if setting is False or setting == 0:
        return None
    layers = checkpointed_layers(model)
    if offload and not layers:
        raise UserError("offload_activations=true: this model's layers cannot be "
                        "checkpointed one by one; leave offload_activations off")
    if setting is not True and not layers:
        raise UserError(f"gradient_checkpointing={setting}: this model's layers cannot be "
                        "checkpointed one by one; use gradient_checkpointing=true")
    if setting is not True and setting > len(layers):
        raise UserError(f"gradient_checkpointing={setting}: the model has {len(layers)} "
                        "layers; give at most that many, or true for every layer")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()
    if not layers:  # the model's own (remote-code) mechanism, all or nothing
        return "activation checkpointing"
    n = len(layers) if setting is True else setting
    device_type = next(model.parameters()).device.type
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n
        if offload:
            layer._gradient_checkpointing_func = offloaded(layer._gradient_checkpointing_func,
                                                           device_type)
    where = "pinned host memory" if device_type != "cpu" else "host memory (a no-op on the CPU)"
    return (f"activation checkpointing: {n} of {len(layers)} layers"
            + (f", offloaded to {where}" if offload else ""))
