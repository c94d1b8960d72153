"""The base of every configuration section: a pydantic model that rejects unknown keys.

``config.py`` builds ``TrainConfig`` from its own sections and the sections each fine-tuning
method (``methods/``) and training stage (``train/stages/``) brings, gathered by
``declared_sections``; all derive from ``Section`` here, so none imports another.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Targets = list[str] | Literal["auto", "all-linear"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def declared_sections(owners) -> dict[str, type[Section]]:
    """The config sections that ``owners`` (methods, stages) declare in their ``sections``
    (``(key, schema)`` pairs), by key; one key declared twice differently is a bug."""
    sections: dict[str, type[Section]] = {}
    for owner in owners:
        for key, schema in owner.sections:
            if sections.setdefault(key, schema) is not schema:
                raise ValueError(f"config section '{key}' is declared twice differently")
    return sections
