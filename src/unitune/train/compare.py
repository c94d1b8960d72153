"""``unitune compare``: the same data trained with several methods, a study whose one axis is
the method (``eval/study.py``): their loss curves on one picture and a table of trainable
share, final losses and exact match (the seed study's figure)."""

from __future__ import annotations

from pathlib import Path

from unitune import methods as registry
from unitune.config import TrainConfig


def compare(cfg: TrainConfig, methods: list[str], out: Path, test_file: str | None = None,
            log=print, progress: bool = True) -> dict:
    from unitune.eval.study import Study, StudyEval, run_study

    for m in methods:
        registry.get(m)  # an unknown name fails before anything trains
    train = cfg.model_dump(mode="json", exclude={"output_dir", "method"}, exclude_unset=True)
    study = Study(output_dir=str(out), train=train, grid={"method": methods},
                  eval=StudyEval(test=test_file, max_new_tokens=16))
    return run_study(study, "unitune compare", log=log, progress=progress)
