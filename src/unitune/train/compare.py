"""Comparing methods on the same data: one run per method, their loss curves on one picture,
and a table of trainable share, final losses and exact match (the seed study's figure)."""

from __future__ import annotations

import json
from pathlib import Path

from unitune import methods as registry
from unitune.config import TrainConfig


def compare(cfg: TrainConfig, methods: list[str], out: Path, test_file: str | None = None,
            log=print, progress: bool = True) -> list[dict]:
    from unitune.data.readers import read_conversations
    from unitune.eval.exact_match import evaluate_exact_match
    from unitune.run import open_model, read_run
    from unitune.train.callbacks import read_metrics
    from unitune.train.recipe import train

    for m in methods:
        registry.get(m)  # an unknown name fails before anything trains
    test = read_conversations(test_file) if test_file else None
    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for method in methods:
        log(f"== {method}")
        run = train(cfg.model_copy(update={"method": method,
                                           "output_dir": str(out / method)}),
                    log=log, progress=progress)
        info = read_run(run)
        logged, val = read_metrics(run / "metrics.jsonl", "loss", "eval_loss")
        curves[method] = logged
        row = {"method": method, "trainable_%": 100 * info.trainable_parameters
               / info.total_parameters,
               "train_loss_last": logged[-1][1] if logged else info.metrics["train_loss"],
               "val_loss": val[-1][1] if val else None,
               "seconds": info.metrics["train_runtime_s"]}
        if test:
            model, tokenizer, template = open_model(run)
            row["exact_match"] = evaluate_exact_match(model, tokenizer, template, test,
                                                      max_new_tokens=16).accuracy
        rows.append(row)
    _plot(out, curves)
    (out / "compare.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    table = format_table(rows)
    (out / "compare.md").write_text(table + "\n", encoding="utf-8")
    log(table)
    log(f"picture: {out / 'compare.png'}")
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["method", "trainable_%", "train_loss_last", "val_loss", "exact_match", "seconds"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.1%}" if c == "exact_match" else
                         f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(out: Path, curves: dict[str, list[tuple[int, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for method, points in curves.items():
        if points:
            ax.plot(*zip(*points, strict=True), label=method)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("training loss by method (same data, same steps)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compare.png")
    plt.close(fig)
