"""The run: the folder every command after training consumes, its record, and reopening it.

Owns
- ``RunRecord``, the typed ``run.json``: what kind of run (sft, pt, compose, merge), its
  status, method, base model and its resolved path, template, quantization,
  ``trust_remote_code``, model patches (a grown vocabulary), the data report and
  fingerprint, metrics and provenance; ``read_run`` / ``write_run`` are its only reader and
  writer (the writer acts on the main process only);
- ``Staging``, the one way any command writes a run folder: built in ``<out>.partial`` and
  moved into place when finished, replacing only a folder that is a run (with
  ``overwrite``) or is empty, never anything else;
- ``open_model``, the one way any command gets (model, tokenizer, template) for a run or a
  base model, reopening a run exactly as it was trained, and ``open_tokenizer`` for commands
  that need no weights;
- ``identity``: what names exactly one model, for the caches of its answers.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unitune import distributed
from unitune.errors import UserError

RUN_FILE = "run.json"
CONFIG_YAML = "config.yaml"  # the effective configuration of a trained run
Status = Literal["running", "interrupted", "failed", "finished"]
_LEGACY_METRICS = ("train_loss", "steps", "tokens_seen", "train_runtime_s", "wall_time_s",
                   "peak_gpu_memory_gib")


class RunRecord(BaseModel):
    """What a run is and how it came about (``run.json``)."""

    model_config = ConfigDict(extra="ignore")

    kind: str = "sft"  # a training stage (sft, pt, ...), compose or merge
    status: Status = "running"
    method: str
    base_model: str
    base_model_path: str | None = None
    base_fingerprint: str | None = None  # its config and weight files, checked on resume
    template: str | None = None
    quantization: str | None = None  # '4bit' / '8bit': the base it trained on
    trust_remote_code: bool = False
    model_patches: dict = Field(default_factory=dict)  # {'vocab_size': n, 'rope_scaling': {}}
    adapter_init: dict | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    masking: str | None = None
    packing: bool | None = None
    data: dict | None = None
    data_fingerprint: str | None = None
    metrics: dict = Field(default_factory=dict)
    optimizations: list[str] = Field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    world_size: int = 1
    sources: dict | None = None  # compose: the expression and its runs; merge: the run merged
    resumed_from: list[str] = Field(default_factory=list)
    error: str | None = None
    unitune_version: str = ""
    started: float = Field(default_factory=time.time)
    ended: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data):
        """Runs written before the record existed kept metrics at the top level."""
        if isinstance(data, dict) and "metrics" not in data:
            data = dict(data)
            data["metrics"] = {k: data.pop(k) for k in _LEGACY_METRICS if k in data}
            if "composed" in data:
                data.setdefault("kind", "compose")
                data["sources"] = data.pop("composed")
            if "merged_from" in data:
                data.setdefault("kind", "merge")
                data["sources"] = data.pop("merged_from")
        return data


def identity(target: str) -> list[str]:
    """What names exactly this model, for the caches of its answers: a folder by its resolved
    path and the size and modification time of its record, config and weights (a run
    retrained or a model replaced in place is another model); a hub id by itself."""
    folder = Path(target)
    if not folder.exists():
        return [target]
    parts = [str(folder.resolve())]
    for name in (RUN_FILE, "config.json", "adapter_model.safetensors", "model.safetensors",
                 "model.safetensors.index.json"):
        if (folder / name).exists():
            stat = (folder / name).stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return parts


def is_run(folder: Path) -> bool:
    return (Path(folder) / RUN_FILE).is_file()


def is_adapter_run(folder: Path) -> bool:
    """A run whose folder holds an adapter of its base (not a whole model)."""
    from unitune import methods

    return is_run(folder) and not methods.get(read_run(folder).method).whole_model


def read_run(folder: str | Path) -> RunRecord:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{folder}: not a unitune run (no {RUN_FILE})")
    try:
        return RunRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise UserError(f"{path}: not a valid run record ({str(exc).splitlines()[0]})") \
            from None


def stored_config(folder: str | Path) -> dict:
    """The configuration a run (finished or partial) was trained with: its ``config.yaml``."""
    from unitune.sections import load_yaml

    path = Path(folder) / CONFIG_YAML
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_YAML} (the configuration it was trained "
                        "with): not a run unitune trained, or damaged")
    return load_yaml(path)


def read_finished(folder: str | Path) -> RunRecord:
    """The record of a finished run; a partial one is refused with what to do about it."""
    record = read_run(folder)
    if record.status != "finished":
        raise UserError(f"{folder}: the run is {record.status}, not finished; resume it with "
                        f"`unitune train --resume {folder}`")
    return record


def write_run(folder: Path, record: RunRecord) -> None:
    """Write ``run.json`` atomically (a reader never sees half of it); main process only."""
    if not distributed.is_main():
        return
    from unitune import __version__

    record.unitune_version = __version__
    tmp = folder / (RUN_FILE + ".tmp")
    tmp.write_text(record.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, folder / RUN_FILE)


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to write ``out`` over anything but an empty folder or (with ``overwrite``) a
    run; nothing is touched."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; pick another")
    if not any(out.iterdir()):
        return
    if not is_run(out):
        raise UserError(f"{out} exists and is not a unitune run; refusing to replace it "
                        "(--overwrite replaces runs only); pick another output folder")
    if not overwrite:
        raise UserError(f"{out} already holds a run; pick another output folder or pass "
                        "--overwrite to replace it")


PARTIAL = ".partial"  # the suffix of a run folder being written


def out_of(partial: Path) -> Path:
    """The run folder a ``<out>.partial`` folder becomes."""
    return partial.with_name(partial.name.removesuffix(PARTIAL))


class Staging:
    """A run folder written in ``<out>.partial`` and moved to ``out`` once finished.

    ``out`` must be absent, empty, or (with ``overwrite``) a run: it is replaced only when the
    new run is complete. A leftover ``<out>.partial`` from an interrupted command is a run
    that may be resumed (``resume``); otherwise it is refused unless ``overwrite``.
    """

    def __init__(self, out: Path, overwrite: bool = False):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + PARTIAL)
        self.overwrite = overwrite

        self.created = False  # whether open() made the folder (and discard() may remove it)

    def open(self, resume: bool = False) -> Path:
        """Check the folders and create ``<out>.partial`` (or reuse it, when resuming); only
        the main process looks at or changes them."""
        if not distributed.is_main():
            return self.path
        check_replaceable(self.out, self.overwrite)
        if self.path.exists() and not resume:
            if not self.path.is_dir() or (any(self.path.iterdir()) and not is_run(self.path)):
                raise UserError(f"{self.path} exists and is not a unitune run; move it away")
            if not self.overwrite and is_run(self.path):
                status = read_run(self.path).status
                raise UserError(f"{self.path} holds an unfinished run ({status}); resume it "
                                f"with `unitune train --resume {self.path}` or pass "
                                "--overwrite to start again")
            shutil.rmtree(self.path)
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def commit(self) -> Path:
        """Move the finished folder into place; an old run there is moved aside (under a
        name no one else uses) and removed only once the new one is in place."""
        if distributed.is_main():
            try:
                check_replaceable(self.out, self.overwrite)  # (it may have changed meanwhile)
            except UserError as exc:
                raise UserError(f"{exc}; the finished run is kept in {self.path}") from None
            old = None
            if self.out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.replaced-",
                                            dir=self.out.parent))
                self.out.rename(old / self.out.name)
            self.path.rename(self.out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the folder, if ``open`` created it (never a partial run found there)."""
        if distributed.is_main() and self.created:
            shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def staged(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """``with staged(out) as folder:`` write into ``folder``; it becomes ``out`` when the block
    ends, and is removed if the block fails (for commands that cannot resume)."""
    staging = Staging(out, overwrite)
    folder = staging.open()
    try:
        yield folder
    except BaseException:
        staging.discard()
        raise
    staging.commit()


# --- reopening models and runs -------------------------------------------------------------


def _base_path(record: RunRecord, log, progress: bool) -> str:
    from unitune.models.loading import model_fingerprint, resolve_model_path

    if record.base_model_path and Path(record.base_model_path).exists():
        path = record.base_model_path
    else:
        path = resolve_model_path(record.base_model, log=log, progress=progress)
    if record.base_fingerprint and model_fingerprint(path) != record.base_fingerprint:
        log(f"warning: the base model at {path} is not the one this run trained on (its "
            "config or weight files changed); the adapter may not fit it")
    return path


def grow_vocabulary(model, rows: int) -> None:
    """Give ``model`` ``rows`` embedding rows, the new ones (and their LM head rows) set to the
    mean of the old: the same values whenever a run's base is reopened (transformers' own
    mean resizing samples around the mean)."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if rows <= old:
        return
    model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        tables = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight}
        head = model.get_output_embeddings()
        if head is not None:
            tables.setdefault(id(head.weight), head.weight)
        for table in tables.values():
            table[old:] = table[:old].mean(dim=0, keepdim=True)


def _trusted(folder: Path, record: RunRecord, trust_remote_code: bool) -> bool:
    """Whether the run's model may run its own code: only when it needs to and the caller
    (the user) says so; a run folder from elsewhere cannot run code on its own say-so."""
    if record.trust_remote_code and not trust_remote_code:
        raise UserError(f"{folder} runs its model's own code (it trained with "
                        "trust_remote_code); pass --trust-remote-code if you trust it")
    return record.trust_remote_code


def open_base(folder: Path, record: RunRecord, dtype, device, quantization: str | None = None,
              trust_remote_code: bool = False, log=print, progress: bool = True):
    """The base model the run in ``folder`` trained on, with its model patches (a grown
    vocabulary) applied and no adapter: what the adapter's weights are relative to."""
    base = load_model_at(_base_path(record, log, progress), dtype, device,
                         _trusted(folder, record, trust_remote_code), quantization,
                         record.model_patches.get("rope_scaling"), head_of(record.kind), log,
                         progress)
    grow_vocabulary(base, record.model_patches.get("vocab_size", 0))
    return base


def head_of(kind: str) -> str:
    """The model head a run of ``kind`` has: 'reward' (a scoring head) or 'causal'."""
    return "reward" if kind == "rm" else "causal"


def load_model_at(path: str, dtype, device, trust_remote_code: bool = False,
                  quantization: str | None = None, rope_scaling: dict | None = None,
                  head: str = "causal", log=print, progress: bool = True):
    """The model at ``path``: a model folder (``load_base``), or a finished run with an
    adapter, folded into its base in memory (a stage that starts from an SFT run: the same
    weights on every reopening); ``head`` 'reward' puts a new scoring head on it."""
    from unitune import methods
    from unitune.models.loading import load_base

    folder = Path(path)
    if not is_adapter_run(folder):
        return load_base(path, dtype, device, trust_remote_code, quantization, rope_scaling,
                         head)
    record = check_foldable(folder, bool(quantization), bool(rope_scaling))
    base = open_base(folder, record, dtype, device, None, trust_remote_code, log, progress)
    model = methods.get(record.method).load(base, folder).merge_and_unload()
    if head == "reward":  # the folded network under a new scoring head
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(model.config)
        config.num_labels = 1
        scorer = AutoModelForSequenceClassification.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code)
        scorer.base_model.load_state_dict(model.base_model.state_dict())
        model = scorer.to(device)
    return model


def check_foldable(folder: Path, quantized: bool = False, rope_scaling: bool = False,
                   sharded: bool = False) -> RunRecord:
    """The record of a run a new run starts from; refused, before anything loads, when it has
    an adapter that cannot be folded into its base in memory (``quantized``,
    ``rope_scaling``, ``sharded``: what the new run asks of that base)."""
    from unitune import methods

    record = read_finished(folder)
    method = methods.get(record.method)
    if method.whole_model:
        return record
    if record.kind == "rm":
        raise UserError(f"{folder}: a reward model, not a language model to start from")
    method.check_foldable(str(folder), "a new run cannot start from it; start from its "
                          "base, or from a LoRA / (IA)3 / full run")
    why = "a quantized base" if quantized or record.quantization else "RoPE scaling" \
        if rope_scaling else "DeepSpeed (which partitions the weights as they load)" \
        if sharded else None
    if why:
        raise UserError(f"{folder}: a run is folded into its base in memory, which {why} "
                        f"cannot take; `unitune merge {folder}` it first and start from the "
                        "merged run")
    return record


def base_config(path: str, trust_remote_code: bool = False):
    """The model config of a model folder, or of the model a run with an adapter is built on
    (without loading weights)."""
    from unitune.models.loading import model_config

    folder = Path(path)
    if is_adapter_run(folder):
        return base_config(_base_path(read_run(folder), lambda *a: None, False),
                           trust_remote_code)
    return model_config(path, trust_remote_code)


def open_model(target: str | Path, device: str = "auto", dtype: str = "auto",
               template: str | None = None, quantization: Literal["as-trained", "none"] =
               "as-trained", trust_remote_code: bool = False, log=print,
               progress: bool = True, rope_scaling: dict | None = None,
               reward_model: bool = False):
    """(model in eval mode, tokenizer, template) for a run folder or a base model.

    A run reopens exactly as it trained: its base (a QLoRA run on a 4-bit base, unless
    ``quantization='none'`` asks for the 16-bit weights, as merging does), its grown
    vocabulary, its adapter, its tokenizer and its template. ``template`` overrides the run's
    (with a warning) or picks one for a base model (default: the model's own). A model whose
    code comes with it (``trust_remote_code``) runs only when the caller passes
    ``trust_remote_code=True``, for a run too: a run folder from elsewhere cannot run code on
    its own say-so. ``rope_scaling`` (``models/rope.py``) stretches a base model's context, or
    replaces a run's own scaling (with a warning). A reward model (``stage=rm``) opens only
    for scoring (``reward_model=True``); every other run only as a language model."""
    from unitune import methods
    from unitune.data.templates import get_template
    from unitune.models.loading import (
        load_base,
        load_tokenizer,
        pick_device,
        pick_dtype,
        resolve_model_path,
        resolve_template,
    )

    template = None if template == "auto" else template
    if template:
        get_template(template)  # an unknown name fails before any weights load
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    folder = Path(target)
    if not is_run(folder):
        path = resolve_model_path(str(target), log=log, progress=progress)
        model = load_base(path, torch_dtype, dev, trust_remote_code,
                          rope_scaling=rope_scaling).eval()
        tokenizer = load_tokenizer(path, trust_remote_code)
        return model, tokenizer, resolve_template(template or "auto", model.config.model_type,
                                                  tokenizer)
    record = read_finished(folder)
    if (record.kind == "rm") != reward_model:
        raise UserError(f"{folder}: a reward model (stage=rm) scores answers and does not "
                        "generate; use it as rl.reward, or score pairs with `unitune eval "
                        f"{folder} --preference PAIRS.json`" if record.kind == "rm" else
                        f"{folder}: a run of kind '{record.kind}', not a reward model (train "
                        "one with stage=rm)")
    method = methods.get(record.method)
    trust = _trusted(folder, record, trust_remote_code)
    if rope_scaling:
        trained = record.model_patches.get("rope_scaling")
        if trained:
            log(f"warning: {folder} was trained with RoPE scaling {trained['type']} "
                f"x{trained['factor']:g}; using {rope_scaling['type']} "
                f"x{rope_scaling['factor']:g} instead")
        record.model_patches = {**record.model_patches, "rope_scaling": rope_scaling}
    if method.whole_model:
        model = load_base(str(folder), torch_dtype, dev, trust, rope_scaling=rope_scaling,
                          head=head_of(record.kind))
    else:
        quant = record.quantization if quantization == "as-trained" else None
        if quant and dev.type != "cuda":
            raise UserError(f"{folder} trained on a {quant} base ({record.method}); reopening it "
                            "as trained needs a CUDA GPU with bitsandbytes (merging it uses "
                            "the 16-bit base and works anywhere)")
        model = method.load(open_base(folder, record, torch_dtype, dev, quant, trust, log,
                                      progress), folder)
    tokenizer = load_tokenizer(str(folder), trust)
    return model.eval(), tokenizer, _run_template(folder, template, log)


def _run_template(folder: Path, template: str | None, log):
    """The template a run trained with, or (warned about) the one the caller names instead."""
    from unitune.data.templates import get_template, load_template

    trained = load_template(folder)
    if not template or template in ("auto", trained.name):
        return trained
    log(f"warning: {folder} was trained with template '{trained.name}'; using '{template}' "
        "instead may give worse answers")
    return get_template(template)


def describe(name: str, trust_remote_code: bool = False, log=print):
    """(where the tokenizer is, the tokenizer, the model config) of a base model or a finished
    run a new run starts from, without loading weights."""
    from unitune.models.loading import describe_base, load_tokenizer

    if not is_run(Path(name)):
        return describe_base(name, trust_remote_code, log)
    trust = _trusted(Path(name), read_finished(name), trust_remote_code)
    return name, load_tokenizer(name, trust), base_config(name, trust)


def open_tokenizer(target: str, template: str = "auto", log=print):
    """(tokenizer, template) of a run or a base model without loading any weights; a preset
    builds only its tokenizer."""
    from unitune.models.loading import describe_base, load_tokenizer, resolve_template

    if is_run(Path(target)):
        return load_tokenizer(str(target)), _run_template(Path(target), template, log)
    _, tok, config = describe_base(target, log=log)
    return tok, resolve_template(template, config.model_type, tok)
