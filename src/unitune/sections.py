"""The base of every configuration section: a pydantic model that rejects unknown keys; and
``load_yaml``, how every YAML file of settings is read (configs, studies, a run's
``config.yaml``).

``config.py`` builds ``TrainConfig`` from its own sections and the sections each fine-tuning
method (``methods/``) and training stage (``train/stages/``) brings, gathered by
``declared_sections``; all derive from ``Section`` here, so none imports another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from unitune.errors import UserError

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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    return data
