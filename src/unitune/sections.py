"""The base of every configuration section: a pydantic model that rejects unknown keys.

``config.py`` builds ``TrainConfig`` from its own sections and the sections each fine-tuning
method brings (``methods/``); both derive from ``Section`` here, so neither imports the other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Targets = list[str] | Literal["auto", "all-linear"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
