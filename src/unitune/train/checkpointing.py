"""Activation checkpointing: every decoder layer, none, or only the first N (selective).

Checkpointing a layer keeps only its input and recomputes the layer in the backward pass: a
third more compute for a fraction of the memory. Checkpointing N of the L layers sits in
between (as NeMo's ``activations_checkpoint_num_layers``): the other L - N layers keep their
activations and skip the recompute, so a GPU with memory to spare trains faster. transformers
checkpoints per layer (``GradientCheckpointingLayer.gradient_checkpointing``); this module
turns it on for the whole model and then off again for the layers after the first N. (Recent
transformers can checkpoint every n-th layer; a count works with any transformers >= 4.52,
such as the one on the GPU machine, and at any granularity.)
"""

from __future__ import annotations

from unitune.errors import UserError


def checkpointed_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable(model, setting: bool | int) -> str | None:
    """Turn checkpointing on as ``setting`` says (True: every layer; N: the first N layers)
    before an adapter is added; returns what is active, for the run's optimizations list.
    Nothing may re-enable it afterwards (PEFT's k-bit preparation is told not to)."""
    if setting is False or setting == 0:
        return None
    layers = checkpointed_layers(model)
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
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n
    return f"activation checkpointing: {n} of {len(layers)} layers"
