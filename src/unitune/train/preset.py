"""Pre-training a tiny preset's base with the ``pt`` stage.

``python -m unitune.train.preset NAME FOLDER`` writes the preset NAME (``models/tiny.py``'s shape
and tokenizer, randomly initialised, then pre-trained on the raw synthetic task text) into
FOLDER: the ``pt`` run's files plus ``preset.json``. ``models/tiny.py`` runs it in a process of
its own on a preset's first use: loading a model never imports training, and the build leaves
the caller's process (its random state, threads and any process group) as it was.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer

from unitune.config import TrainConfig
from unitune.errors import UserError
from unitune.models.tiny import get_preset, init_model, preset_tokenizer, pretrain_corpus
from unitune.run import read_run
from unitune.train.recipe import train


def build_preset(name: str, folder: Path, log=print, progress: bool = True) -> None:
    preset = get_preset(name)
    tokenizer = AutoTokenizer.from_pretrained(str(preset_tokenizer(name, log)))
    init = folder / "init"
    init_model(preset, tokenizer).save_pretrained(init, safe_serialization=True)
    tokenizer.save_pretrained(init)
    run = folder / "run"
    cfg = TrainConfig(stage="pt", method="full", base_model=str(init), template="raw",
                      data=[str(pretrain_corpus(preset, folder / "corpus"))],
                      output_dir=str(run), max_length=preset.pretrain_block,
                      batch_size=preset.pretrain_batch_size, max_steps=preset.pretrain_steps,
                      lr=preset.pretrain_lr, lr_scheduler="constant_with_warmup", warmup=50,
                      weight_decay=0.01, seed=preset.seed, device="cpu", dtype="fp32",
                      logging_steps=max(1, min(50, preset.pretrain_steps // 10)),
                      save_steps=preset.pretrain_steps)
    train(cfg, log=log, progress=progress)
    for path in run.iterdir():  # the pt run is the preset
        path.rename(folder / path.name)
    for leftover in (init, run, folder / "corpus"):
        shutil.rmtree(leftover)
    meta = {"preset": name, **asdict(preset), "pretrain": read_run(folder).metrics}
    (folder / "preset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m unitune.train.preset")
    parser.add_argument("name")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.no_progress:  # (transformers' own bars too: loading and writing weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        build_preset(args.name, args.folder, log=lambda line: print(line, file=sys.stderr),
                     progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
