"""Methods that train the base model's own weights: ``full`` (every weight) and ``freeze``
(only the last N decoder blocks and named modules). Their run folder is a complete Hugging
Face model, saved and loaded by transformers."""

from __future__ import annotations

from pydantic import Field

from unitune.errors import UserError
from unitune.methods.base import Method, register, unfreeze
from unitune.models.families import require_family
from unitune.sections import Section


class FreezeSection(Section):
    """freeze: train only the last N decoder blocks (and the named modules)."""

    trainable_layers: int = Field(2, ge=0)
    modules: list[str] = Field(default_factory=list)


class Full(Method):
    name = "full"
    summary = "every weight"
    whole_model = True
    composable = "full"  # task arithmetic on the weights' differences from the base

    def build(self, model, cfg, model_type):
        for p in model.parameters():
            p.requires_grad_(True)
        return model, []


class Freeze(Method):
    name = "freeze"
    summary = "the last N decoder blocks (+ named modules)"
    sections = (("freeze", FreezeSection),)
    whole_model = True
    composable = "full"

    def build(self, model, cfg, model_type):
        for p in model.parameters():
            p.requires_grad_(False)
        layers = model.get_submodule(require_family(model_type, "layer layout").layers)
        n = cfg.freeze.trainable_layers
        if n > len(layers):
            raise UserError(f"freeze.trainable_layers={n} but the model has {len(layers)} "
                            "layers")
        for layer in list(layers)[len(layers) - n:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        from unitune.models.loading import is_scorer

        heads = ["score"] if is_scorer(model) else []
        unfreeze(model, cfg.freeze.modules + cfg.modules_to_save + heads)  # (a new head trains)
        return model, []


register(Full())
register(Freeze())
