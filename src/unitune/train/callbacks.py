"""Trainer callbacks: the progress bar, the metrics log (and its reader), evaluation at the
end of training, and the loss-curve picture."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    """A tqdm bar with loss, tokens/s (non-padding tokens) and ETA."""

    def __init__(self, disable: bool = False, desc: str = "train"):
        self.bar = None
        self.desc = desc
        self.disable = disable
        self.start = 0.0
        self.loss: float | None = None  # none shown before the first logged loss
        self.tokens_before = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc,
                        unit="step", disable=self.disable, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.tokens_before = state.num_input_tokens_seen or 0  # (a resumed run's earlier ones)

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens = (state.num_input_tokens_seen or 0) - self.tokens_before
        shown = {"tok_s": f"{tokens / elapsed:,.0f}"}
        if self.loss is not None:
            shown = {"loss": f"{self.loss:.4f}", **shown}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class MetricsLogCallback(TrainerCallback):
    """Appends every log event (loss, lr, eval loss, tokens seen) as a JSON line; a resumed
    run first drops the rows after its checkpoint, which it is about to redo."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        self.start = time.perf_counter()
        if resume_step is not None and path.exists():
            kept = [json.dumps(row) + "\n" for row in _rows(path)
                    if row["step"] <= resume_step]
            path.write_text("".join(kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": state.epoch,
               "tokens_seen": state.num_input_tokens_seen,
               "elapsed_s": round(time.perf_counter() - self.start, 3), **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class EvaluateAtEnd(TrainerCallback):
    """Evaluates at the last step, so a run whose ``max_steps`` ends before its first epoch
    does is still evaluated (and one that ends on an epoch boundary only once)."""

    def __init__(self):
        self.final_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            self.final_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.final_step == state.global_step:
            control.should_evaluate = False


def _rows(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a last line torn by a killed process is left out."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def read_metrics(path: Path, *keys: str) -> list[list[tuple[int, float]]]:
    """For each key, (step, value) of every ``metrics.jsonl`` row that logged it."""
    rows = _rows(path)
    return [[(r["step"], r[key]) for r in rows if key in r] for key in keys]


def plot_loss(metrics_path: Path, out_png: Path, title: str = "training loss") -> bool:
    """Draw train (and validation) loss against step; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_metrics(metrics_path, "loss", "eval_loss")
    if not train and not val:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return True
