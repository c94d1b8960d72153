"""The quickstart recipe: synthetic data -> tiny base -> exact match before -> LoRA -> after.

Everything runs on the embedded defaults, nothing is downloaded, and it finishes in a few
minutes on a 2-core CPU (the first run also builds and caches the tiny base).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from unitune.config import TrainConfig
from unitune.data.readers import read_conversations
from unitune.data.synth import DEFAULT_FAMILIES, write_suite
from unitune.errors import UserError


@dataclass(frozen=True)
class QuickstartSize:
    train_per_family: int
    val_per_family: int
    test_per_family: int
    steps: int
    preset: str


SIZES = {
    "full": QuickstartSize(train_per_family=400, val_per_family=20, test_per_family=40,
                           steps=500, preset="tiny-llama"),
    # a reduced run for tests: a barely trained base, a few steps; shows the plumbing only
    "smoke": QuickstartSize(train_per_family=16, val_per_family=4, test_per_family=4,
                            steps=4, preset="tiny-llama-test"),
}


def run_quickstart(out: Path, size: str = "full", overwrite: bool = False, seed: int = 0,
                   log=print, progress: bool = True) -> dict:
    from unitune.eval.exact_match import evaluate_exact_match, write_report
    from unitune.run import check_replaceable, open_model
    from unitune.train.recipe import train

    spec = SIZES[size]
    run_dir = out / "run"
    check_replaceable(run_dir, overwrite)
    if (out / "data").exists() and not overwrite and any((out / "data").iterdir()):
        raise UserError(f"{out / 'data'} is not empty; pass --overwrite to regenerate it")
    t0 = time.time()
    paths = write_suite(out / "data", list(DEFAULT_FAMILIES), spec.train_per_family,
                        spec.val_per_family, spec.test_per_family, n_pretrain=0, seed=seed)
    log(f"data: {out / 'data'} ({', '.join(DEFAULT_FAMILIES)})")
    test = read_conversations(str(paths["test"]))

    base, tokenizer, template = open_model(spec.preset, template="alpaca", log=log,
                                           progress=progress)
    before = evaluate_exact_match(base, tokenizer, template, test, max_new_tokens=16)
    log(f"before fine-tuning: held-out exact match {before.accuracy:.1%} (n={before.n})")
    del base

    cfg = TrainConfig(base_model=spec.preset, data=[str(paths["train"])],
                      validation_data=[str(paths["validation"])], output_dir=str(run_dir),
                      template="alpaca", max_steps=spec.steps, batch_size=32, lr=3e-3,
                      lr_scheduler="cosine", warmup=0.05, logging_steps=10, seed=seed,
                      lora={"r": 32, "alpha": 64, "dropout": 0.0}, overwrite=overwrite)
    train(cfg, log=log, progress=progress)
    model, tokenizer, template = open_model(run_dir)
    after = evaluate_exact_match(model, tokenizer, template, test, max_new_tokens=16)
    write_report(before, run_dir / "eval_before.json")
    write_report(after, run_dir / "eval_after.json")
    summary = {"before": before.accuracy, "after": after.accuracy, "n_test": after.n,
               "per_family_before": before.per_family, "per_family_after": after.per_family,
               "seconds": round(time.time() - t0, 1), "run_dir": str(run_dir),
               "data_dir": str(out / "data"), "base_model": spec.preset}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    log("\nper family (held-out test split):")
    log(f"{'family':<14}{'before':>9}{'after':>9}")
    for fam in sorted(after.per_family):
        log(f"{fam:<14}{before.per_family.get(fam, 0):>9.1%}{after.per_family[fam]:>9.1%}")
    log(f"{'overall':<14}{before.accuracy:>9.1%}{after.accuracy:>9.1%}   (n={after.n})")
    log(f"\nexact match before {before.accuracy:.1%} -> after {after.accuracy:.1%} "
        f"in {summary['seconds']:.0f}s")
    log(f"run folder: {run_dir} (adapter, tokenizer, template.json, config.yaml, "
        "metrics.jsonl, tb/, loss.png)")
    log(f"try it: unitune generate {run_dir} \"Count the letters.\" --input \"h e l l o\"")
    return summary
