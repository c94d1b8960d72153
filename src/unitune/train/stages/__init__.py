"""Training stages: the registry of what can be trained (``base.Stage``): the language-modelling
stages ``sft`` and ``pt`` (``supervised``) and the preference stages after SFT (``preference``:
reward modelling, DPO and its loss variants, KTO, GRPO, RLOO, ORPO, CPO on TRL). ``get(name)``
returns one; ``config_sections()`` gives the config sections they read."""

from __future__ import annotations

from unitune.errors import UserError, did_you_mean
from unitune.sections import Section, declared_sections
from unitune.train.stages.base import Stage
from unitune.train.stages.preference import PREFERENCE_STAGES
from unitune.train.stages.supervised import Pretraining, SupervisedFineTuning

STAGES: dict[str, Stage] = {s.name: s for s in (SupervisedFineTuning(), Pretraining(),
                                                *PREFERENCE_STAGES)}


def get(name: str) -> Stage:
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'{did_you_mean(name, STAGES)}; stages: "
                        f"{', '.join(STAGES)}")
    return STAGES[name]


def config_sections() -> dict[str, type[Section]]:
    """Every config section the stages read, by key."""
    return declared_sections(STAGES.values())
