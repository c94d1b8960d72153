"""RoPE scaling (linear position interpolation, dynamic NTK, YaRN) through transformers' own
implementations: the base config's current RoPE fields (``rope_parameters``) are read, the
scaling written into them, and the result recorded in the run as a model patch, so every
reopen, merge and export uses the same positions. A base that already scales its RoPE (e.g.
Llama 3.1's ``llama3``) is not silently overridden: scaling it again is an error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator

from unitune.errors import UserError
from unitune.sections import Section

KINDS = ("linear", "dynamic", "yarn")


class RopeScaling(Section):
    """``rope_scaling: {type: linear|dynamic|yarn, factor: 4}``."""

    type: Literal["linear", "dynamic", "yarn"]
    factor: float = Field(..., description="context multiple (>= 1)")
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="the length the base was trained at (default: its "
        "max_position_embeddings)")

    @field_validator("factor")
    @classmethod
    def _at_least_one(cls, value: float) -> float:
        if value < 1:
            raise ValueError(f"factor {value}: a factor below 1 shrinks the context; use at "
                             "least 1 (4 = four times the context)")
        return value


def parse(text: str | None) -> dict | None:
    """``TYPE:FACTOR`` (e.g. ``dynamic:4``) as a scaling dict; None for no scaling."""
    if not text:
        return None
    kind, sep, factor = text.partition(":")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not sep or kind not in KINDS or value is None:
        raise UserError(f"--rope {text!r}: expected TYPE:FACTOR with TYPE one of "
                        f"{', '.join(KINDS)}, e.g. dynamic:4")
    return {"type": kind, "factor": value}


def apply(config, scaling: dict) -> dict:
    """Writes ``scaling`` into ``config``'s RoPE fields; returns what the run records."""
    try:
        spec = RopeScaling.model_validate(scaling)
    except ValidationError as exc:
        raise UserError(f"rope scaling: {exc.errors()[0]['msg'].removeprefix('Value error, ')}"
                        ) from None
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise UserError(f"model type '{config.model_type}' has no single set of RoPE "
                        "parameters to scale (no rotary embeddings, or one set per layer "
                        "type)")
    current = params.get("rope_type", "default")
    if current != "default":
        raise UserError(f"the base already scales its RoPE ({current}, factor "
                        f"{params.get('factor')}); scaling it again would replace that: "
                        "leave rope_scaling out")
    original = spec.original_max_position_embeddings or config.max_position_embeddings
    new = {**params, "rope_type": spec.type, "factor": spec.factor}
    if spec.type in ("dynamic", "yarn"):
        new["original_max_position_embeddings"] = original
    config.rope_parameters = new
    if spec.type != "dynamic":  # (dynamic NTK takes max_position_embeddings as the original)
        config.max_position_embeddings = int(original * spec.factor)
    return {"type": spec.type, "factor": spec.factor,
            "original_max_position_embeddings": original}


def context_length(config) -> int | None:
    """How many positions a model takes: ``max_position_embeddings``, or the original length
    times the factor of its RoPE scaling where that is more (dynamic NTK keeps the field at
    the original length; some yarn configs do too)."""
    positions = getattr(config, "max_position_embeddings", None)
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not positions or not isinstance(params, dict) or not params.get("factor"):
        return positions
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "dynamic":  # (transformers reads the field as the original length)
        return int(positions * params["factor"])
    original = params.get("original_max_position_embeddings") if kind != "default" else None
    return max(positions, int(original * params["factor"])) if original else positions
