"""Checkpoints that resume exactly, and stopping cleanly on a signal.

The HF Trainer writes each checkpoint (weights or adapter, optimizer, scheduler, the RNG state
of every process, its own state with the position in the data) into
``<run>.partial/checkpoints/checkpoint-<step>``. Owned here:

- the manifest (``unitune_checkpoint.json``), written last, once every process has saved: the
  step, the config and data fingerprint it belongs to, and the size and digest of every file.
  A checkpoint without one, or whose files no longer match it, is half-written or corrupt and
  is skipped (with a warning) in favour of the previous one. We keep the newest
  ``keep_checkpoints`` valid ones ourselves, deleting old ones only after a new one is valid
  (the Trainer's own rotation runs before we know that);
- a checkpoint at the last step too (the Trainer's), marked ``final``: a failure while saving
  the run loses nothing, and resuming it only saves;
- what may change between a run and its resume (``config_changes``);
- SIGTERM / SIGINT: the first one finishes the current step, writes a checkpoint and stops
  (every process agrees on the step); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from unitune import distributed
from unitune.data.cache import file_sha256

MANIFEST = "unitune_checkpoint.json"
CHECKPOINTS = "checkpoints"
_PREFIX = "checkpoint-"
_WHOLE_DIGEST = 256 << 20  # files up to this size are hashed whole, larger ones head + tail
# keys that do not change what a run computes (where it is written, how often it logs/saves)
RESUMABLE_KEYS = {"output_dir", "overwrite", "logging_steps", "save_steps", "keep_checkpoints",
                  "data_workers", "gradient_checkpointing", "offload_activations"}


def _files(folder: Path) -> dict[str, list]:
    return {str(p.relative_to(folder)): [p.stat().st_size, file_sha256(p, _WHOLE_DIGEST)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None when it is."""
    path = folder / MANIFEST
    if not path.is_file():
        return "half-written (no manifest)"
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return "its manifest is unreadable"
    for name, (size, digest) in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
        if file_sha256(f, _WHOLE_DIGEST) != digest:
            return f"{name} is corrupt (its content changed)"
    return None


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder (-1 for a name that is not one)."""
    try:
        return int(folder.name.removeprefix(_PREFIX))
    except ValueError:
        return -1


def checkpoints(run: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and step_of(p) >= 0]
    return sorted(found, key=step_of, reverse=True)


def newest_valid(run: Path, log=print) -> Path | None:
    """The newest checkpoint that is complete and intact; each newer broken one is reported."""
    for folder in checkpoints(run):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log(f"warning: skipping {folder}: {problem}")
    return None


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every config key that differs, except those that do not change
    what is computed."""
    changes = []
    for key in sorted(set(before) | set(after)):
        if not prefix and key in RESUMABLE_KEYS:
            continue
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


class Checkpoints(TrainerCallback):
    """Writes the manifest of every checkpoint once all processes saved it (after the other
    callbacks added their files), then keeps the newest ``keep`` complete ones."""

    def __init__(self, run: Path, keep: int, stamp: dict):
        self.run, self.keep, self.stamp = run, keep, stamp

    def on_save(self, args, state, control, **kwargs):
        distributed.barrier()  # every process has written its RNG state
        if distributed.is_main():
            folder = self.run / CHECKPOINTS / f"{_PREFIX}{state.global_step}"
            data = {**self.stamp, "step": state.global_step,
                    "final": state.global_step >= state.max_steps, "files": _files(folder)}
            tmp = folder / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, folder / MANIFEST)
            complete = [f for f in checkpoints(self.run)
                        if (f / MANIFEST).is_file() and step_of(f) <= state.global_step]
            for old in complete[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGINT: finish this step, save a checkpoint, stop (without the evaluation an
    epoch's end would run). A second SIGINT raises ``KeyboardInterrupt`` at once. The handlers
    are in place only while training (``restore`` puts the previous ones back)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, log=print):
        self.log = log
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):  # (no printing here: it may interrupt a write)
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_process(self.received is not None):
            self.received = self.received or signal.SIGTERM  # (another process got it)
            self.stopped_at = state.global_step
            again = " (Ctrl-C again to stop at once)" if self.received == signal.SIGINT else ""
            self.log(f"\n{signal.Signals(self.received).name}: stopping after step "
                     f"{state.global_step} and saving a checkpoint{again}")
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:
            control.should_evaluate = False
