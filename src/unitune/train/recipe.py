"""Training a model: the recipe every stage runs (set up, train, save) around the HF Trainer.

- ``setup``: the run folder (``<output_dir>.partial``; a resume reopens it and checks that
  nothing that changes the result has changed), the record (status ``running``) and the
  effective ``config.yaml``, the prepared data (tokenised once, cached by content, before any
  process group exists), the base model with its patches, the fast path and the method, and
  the Trainer with the run's callbacks.
- ``train``: ``Trainer.train``, from the newest valid checkpoint when resuming. SIGTERM or
  SIGINT saves a checkpoint and stops (``Interrupted``); a crash keeps the partial run (its
  metrics and checkpoints) and says how to resume it.
- ``save``: the weights (gathered from every process), tokenizer, template, initial adapter
  and loss picture, the record (``finished``), and the folder moved into place.

Works unchanged under ``torchrun`` and ``accelerate launch``: ``batch_size`` is the batch of all
processes together, only the main process writes, and DDP, FSDP2 (``fsdp: true``) or DeepSpeed
(``deepspeed: zero2|zero3|file``) come from the Trainer.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
import yaml
from transformers import Trainer

from unitune import distributed, methods
from unitune.config import TrainConfig, write_config
from unitune.data.templates import get_template
from unitune.errors import UserError
from unitune.run import (
    CONFIG_FILE,
    RunRecord,
    Staging,
    check_replaceable,
    is_run,
    read_run,
    write_run,
)
from unitune.train import checkpointing, resume, speed, stages

DEEPSPEED = {"zero2": "zero2.json", "zero3": "zero3.json"}  # shipped in train/deepspeed/


class Interrupted(Exception):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def train(cfg: TrainConfig, log=print, progress: bool = True, callbacks: list | None = None,
          resume_from: bool | str | Path = False, force_resume: bool = False) -> Path:
    """Train as ``cfg`` says and return the finished run folder. ``resume_from``: True
    resumes the unfinished run of ``cfg.output_dir``, a path resumes that partial run (or
    checkpoint); ``force_resume`` accepts changed settings or data. ``callbacks``: extra
    ``TrainerCallback``s."""
    recipe = Recipe(cfg, log, progress, callbacks or [])
    try:
        recipe.setup(resume_from, force_resume)
    except BaseException:
        if not resume_from:  # nothing of value was written: no step was trained
            recipe.staging.discard()
        raise
    try:
        recipe.train()
        return recipe.save()
    finally:
        recipe.close()


def resume_folder(target: bool | str | Path, output_dir: str) -> tuple[Path, Path | None]:
    """(the partial run to resume, a checkpoint the user named or None)."""
    if target is True:
        folder = Staging(Path(output_dir)).path
        if not is_run(folder):
            raise UserError(f"nothing to resume: no unfinished run at {folder} (train without "
                            "--resume to start one)")
        return folder, None
    path = Path(target)
    if not path.exists():
        raise UserError(f"--resume {path}: no such folder")
    if path.name.startswith("checkpoint-") and path.parent.name == resume.CHECKPOINTS:
        return path.parent.parent, path
    if not is_run(path) and is_run(Staging(path).path):
        path = Staging(path).path
    if not is_run(path):
        raise UserError(f"--resume {path}: not a unitune run or checkpoint (no run.json)")
    if read_run(path).status == "finished":
        raise UserError(f"--resume {path}: the run is finished; there is nothing to resume")
    if not path.name.endswith(".partial"):
        raise UserError(f"--resume {path}: not an unfinished run folder (<output_dir>.partial)")
    return path, None


def resume_config(target: str, output_dir: str | None) -> tuple[str, str]:
    """For ``--resume PARTIAL_RUN`` without a config: (the run's config file, its output
    folder), so the run resumes where it is, whatever the current directory."""
    folder, _ = resume_folder(target, output_dir or "")
    out = str(folder.with_name(folder.name.removesuffix(".partial")))
    if output_dir and Path(output_dir).resolve() != Path(out).resolve():
        raise UserError(f"--resume {target}: that run's output folder is {out}, not "
                        f"{output_dir}")
    stored_config(folder)  # (refuses a folder without one)
    return str(folder / CONFIG_FILE), out


def stored_config(folder: Path) -> dict:
    """The config a partial run was started with (``config.yaml``)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_FILE}; it cannot be resumed")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _model_fingerprint(path: str) -> str:
    """What identifies a local base model without reading its weights: its config and the
    names and sizes of its weight files (a hub id is its name)."""
    import hashlib

    folder = Path(path)
    if not folder.is_dir():
        return path
    parts = [(folder / "config.json").read_text(encoding="utf-8")]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(folder.glob("*.safetensors"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class Recipe:
    def __init__(self, cfg: TrainConfig, log, progress: bool, callbacks: list):
        self.cfg, self.progress, self.extra_callbacks = cfg, progress, callbacks
        self.log = log if distributed.is_main() else (lambda *a, **k: None)
        self.stage = stages.get(cfg.stage)
        self.method = methods.get(cfg.method)
        self.staging = Staging(Path(cfg.output_dir), cfg.overwrite)
        self.started = time.time()

    # --- set up --------------------------------------------------------------------------

    def setup(self, resume_from: bool | str | Path, force: bool) -> None:
        cfg, log = self.cfg, self.log
        self._check()
        self.checkpoint = None
        if resume_from:
            folder, named = resume_folder(resume_from, cfg.output_dir)
            if folder.resolve() != self.staging.path.resolve():
                raise UserError(f"--resume {folder}: that run belongs to output_dir "
                                f"{folder.with_name(folder.name.removesuffix('.partial'))}, "
                                f"not {cfg.output_dir}")
            self.record = read_run(folder)
            self.staging.open(resume=True)
            self.checkpoint = named or resume.newest_valid(folder, log)
            if named and resume.checkpoint_problem(named):
                raise UserError(f"--resume {named}: {resume.checkpoint_problem(named)}")
            if self.checkpoint is None:
                log(f"warning: {folder} has no valid checkpoint; training starts from step 0")
        else:
            self.staging.open()
            self.record = RunRecord(kind=self.stage.name, method=cfg.method,
                                    base_model=cfg.base_model, template=cfg.template,
                                    masking=cfg.masking, packing=cfg.packing,
                                    world_size=distributed.world_size())
        self.folder = self.staging.path
        self._setup_model_and_data(force)
        self._setup_trainer()

    def _check(self) -> None:
        from unitune.data.sources import resolve_files

        cfg = self.cfg
        check_replaceable(self.staging.out, cfg.overwrite)
        for spec in [*cfg.data, *cfg.validation_data]:  # a missing file fails before any work
            resolve_files(spec.path, cfg.data_dir)
        if cfg.template != "auto":
            get_template(cfg.template)  # an unknown name fails before any data is read
        checkpointing.check(cfg.gradient_checkpointing, cfg.offload_activations)
        world = distributed.world_size()
        if cfg.batch_size % world:
            raise UserError(f"batch_size={cfg.batch_size} cannot be split over {world} "
                            f"processes; give a multiple of {world}")
        if cfg.fsdp and cfg.deepspeed:
            raise UserError("choose fsdp=true or deepspeed, not both")
        if (cfg.fsdp or cfg.deepspeed) and (cfg.device == "cpu" or not torch.cuda.is_available()):
            what = "fsdp=true" if cfg.fsdp else f"deepspeed={cfg.deepspeed}"
            raise UserError(f"{what} shards training over GPUs and needs CUDA (on the CPU "
                            "accelerate would quietly fall back to DDP); leave it off here")
        if cfg.deepspeed:
            self._deepspeed_config()

    def _deepspeed_config(self) -> str:
        cfg = self.cfg
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise UserError(f"deepspeed={cfg.deepspeed} needs the deepspeed package "
                            "(pip install deepspeed)") from None
        if cfg.deepspeed in DEEPSPEED:
            return str(Path(__file__).parent / "deepspeed" / DEEPSPEED[cfg.deepspeed])
        if not Path(cfg.deepspeed).is_file():
            raise UserError(f"deepspeed={cfg.deepspeed}: give zero2, zero3 or a JSON config "
                            "file that exists")
        return cfg.deepspeed

    def _refuse_changes(self, what: str, changes: list[str], force: bool) -> None:
        if not changes:
            return
        listed = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more"
                                            if len(changes) > 5 else "")
        if force:
            self.log(f"warning: resuming although the {what} changed ({listed})")
            return
        raise UserError(f"cannot resume {self.staging.path}: the {what} changed since it "
                        f"started ({listed}); resume with the original ones, or pass "
                        "--force-resume to continue anyway")

    def _setup_model_and_data(self, force: bool) -> None:
        from unitune.data import cache
        from unitune.models.loading import (
            describe_base,
            load_base,
            load_tokenizer,
            pick_device,
            pick_dtype,
            resolve_model_path,
            resolve_template,
        )

        cfg, log, record = self.cfg, self.log, self.record
        tokenizer_path, base_config = describe_base(cfg.base_model, cfg.trust_remote_code, log)
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        model_type = base_config.model_type
        self.seq2seq = bool(getattr(base_config, "is_encoder_decoder", False))
        self.method.check(cfg, model_type, self.device)
        self.stage.check(cfg, self.seq2seq)
        self.tokenizer = load_tokenizer(tokenizer_path, cfg.trust_remote_code)
        self.template = resolve_template(cfg.template, model_type, self.tokenizer)
        effective = cfg.model_copy(update={"template": self.template.name})
        key = cache.data_key(cfg, self.tokenizer, self.template, self.seq2seq)
        resuming = record.data_fingerprint is not None
        if resuming:  # refuse what would change the result
            changes = resume.config_changes(stored_config(self.folder),
                                            effective.model_dump(mode="json"))
            self._refuse_changes("settings", changes, force)
            if record.data_fingerprint != key:
                self._refuse_changes("data", ["the data files, tokenizer or template differ"],
                                     force)
        record.template, record.data_fingerprint = self.template.name, key
        record.trust_remote_code = cfg.trust_remote_code
        record.quantization = self.method.base_quantization(cfg)
        record.status, record.error = "running", None
        if self.checkpoint is not None:
            record.resumed_from.append(self.checkpoint.name)
        trained_on = "every token" if cfg.stage == "pt" else {
            "assistant": "every assistant reply", "last": "the last assistant reply",
            "all": "all tokens"}[cfg.masking]
        log(f"stage: {cfg.stage}; template: {self.template.name}; loss on {trained_on}"
            f"{'; packing' if cfg.packing else ''}")

        # the data, before any process group exists (tokenising may take long)
        prepared = cache.prepared(key, self.stage.build(cfg, self.tokenizer, self.template,
                                                        self.seq2seq, self.progress), log)
        record.data = prepared.report
        self.train_rows = self.stage.train_set(prepared.train, cfg, log)
        self.val_rows = prepared.validation

        model_path = resolve_model_path(cfg.base_model, log=log, progress=self.progress)
        model_id = _model_fingerprint(model_path)
        if resuming and record.base_fingerprint != model_id:
            self._refuse_changes("base model", [f"{model_path} holds other weights"], force)
        record.base_model_path, record.base_fingerprint = model_path, model_id
        base = load_base(model_path, self.dtype, self.device, cfg.trust_remote_code,
                         quantize=record.quantization)
        record.model_patches = self._patch_vocabulary(base)
        self.active = speed.optimize(base, cfg.kernels, cfg.attention,
                                     cfg.gradient_checkpointing, cfg.offload_activations,
                                     cfg.packing)
        torch.manual_seed(cfg.seed)  # the adapter's initialisation is a function of the seed
        self.model, self.method_callbacks = self.method.build(base, cfg, model_type)
        self.active += speed.optimize_adapter(self.model, self.dtype, cfg.kernels)
        log(f"optimizations: {'; '.join(self.active)}")
        record.optimizations = self.active
        record.adapter_init = None
        self.init_state = None
        if self.method.shares_init:
            record.adapter_init = {"seed": cfg.seed}
            if cfg.init_adapter:
                record.adapter_init = {"from": str(self._load_init(Path(cfg.init_adapter)))}
            self.init_state = self.method.adapter_weights(self.model)
        trainable, total = trainable_parameters(self.model)
        record.trainable_parameters, record.total_parameters = trainable, total
        log(f"method: {cfg.method}; trainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / total:.2f}%)")
        if distributed.is_main():  # the run exists from here: a crash leaves it resumable
            write_config(effective, self.folder / CONFIG_FILE)
            write_run(self.folder, record)

    def _patch_vocabulary(self, base) -> dict:
        """Grow the embeddings when the tokenizer has more tokens than the base has rows."""
        rows = base.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) <= rows:
            return {}
        base.resize_token_embeddings(len(self.tokenizer))
        saved = set(self.cfg.modules_to_save)
        if not self.method.whole_model and not saved & {"embed_tokens", "lm_head", "wte"}:
            self.log(f"warning: the embeddings grew from {rows} to {len(self.tokenizer)} rows; "
                     "the new rows stay untrained unless modules_to_save includes the "
                     "embeddings (embed_tokens) and the head (lm_head)")
        return {"vocab_size": len(self.tokenizer)}

    def _load_init(self, folder: Path) -> Path:
        """Start the adapter from another run's initial adapter (the paper's shared
        initialisation): its ``adapter_init.safetensors``, else its trained adapter."""
        from safetensors.torch import load_file

        path = folder / methods.INIT_FILE
        if not path.exists():
            path = folder / methods.WEIGHTS_FILE
        if not path.exists():
            raise UserError(f"init_adapter={folder}: no {methods.INIT_FILE} or "
                            f"{methods.WEIGHTS_FILE} there")
        state = load_file(str(path))
        mine = self.method.adapter_weights(self.model)
        if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
            raise UserError(f"init_adapter={folder}: its adapter does not fit this one "
                            "(different method, target modules or rank)")
        self.method.set_adapter_weights(self.model, state)
        return path

    def _training_arguments(self):
        from transformers import TrainingArguments

        cfg, world = self.cfg, distributed.world_size()
        extra = {}
        if cfg.fsdp:
            extra.update(fsdp="full_shard auto_wrap", fsdp_config={
                "fsdp_version": 2, "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "transformer_layer_cls_to_wrap": sorted(
                    {type(m).__name__ for m in checkpointing.checkpointed_layers(self.model)})})
        if cfg.deepspeed:
            extra["deepspeed"] = self._deepspeed_config()
        return TrainingArguments(
            output_dir=str(self.folder / resume.CHECKPOINTS),
            per_device_train_batch_size=cfg.batch_size // world,
            per_device_eval_batch_size=max(1, cfg.batch_size // world),
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
            num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
            lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup,
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
            save_total_limit=None, report_to=[],
            eval_strategy="epoch" if self.val_rows is not None else "no",
            seed=cfg.seed, data_seed=cfg.seed,
            bf16=self.dtype == torch.bfloat16, fp16=self.dtype == torch.float16,
            use_cpu=self.device.type == "cpu", disable_tqdm=True,
            use_liger_kernel=speed.LIGER in self.active,
            include_num_input_tokens_seen="all" if cfg.packing or cfg.stage == "pt"
            else "non_padding",
            dataloader_num_workers=0, remove_unused_columns=False,
            ddp_find_unused_parameters=False, **extra)

    def _setup_trainer(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
        from transformers.trainer_callback import PrinterCallback

        from unitune.train.callbacks import EvaluateAtEnd, MetricsLogCallback, ProgressCallback

        step = resume.manifest(self.checkpoint)["step"] if self.checkpoint else 0
        self.stop = resume.StopOnSignal(self.log)
        stamp = {"data_fingerprint": self.record.data_fingerprint,
                 "config": self.cfg.model_dump(mode="json")}
        callbacks = [self.stop, resume.Checkpoints(self.folder, self.cfg.keep_checkpoints,
                                                   stamp)]
        if self.val_rows is not None:
            callbacks.append(EvaluateAtEnd())
        self.writer = None
        if distributed.is_main():
            self.writer = SummaryWriter(log_dir=str(self.folder / "tb"), purge_step=step or None)
            callbacks += [ProgressCallback(disable=not self.progress),
                          MetricsLogCallback(self.folder / "metrics.jsonl", step),
                          TensorBoardCallback(tb_writer=self.writer)]
        self.trainer = RunTrainer(
            method=self.method, model=self.model, args=self._training_arguments(),
            train_dataset=self.train_rows, eval_dataset=self.val_rows,
            data_collator=self.stage.collator(self.tokenizer), processing_class=self.tokenizer,
            callbacks=[*callbacks, *self.method_callbacks, *self.extra_callbacks])
        self.trainer.remove_callback(PrinterCallback)  # our bar and metrics log replace it

    # --- train ---------------------------------------------------------------------------

    def train(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        resume_cmd = f"unitune train --resume {self.folder}"
        self.result = None
        try:
            self.result = self.trainer.train(
                resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            error = None if interrupted else \
                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            self._finish_record("interrupted" if interrupted else "failed", error)
            kept = resume.newest_valid(self.folder, lambda *a: None)
            where = f"from {kept.name}" if kept else "from the start (no checkpoint yet)"
            self.log(f"training {'interrupted' if interrupted else 'failed'}; the partial run "
                     f"is kept in {self.folder}; resume it {where} with: {resume_cmd}")
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        state = self.trainer.state
        if self.stop.stopped_at is not None and state.global_step < state.max_steps:
            self._finish_record("interrupted")
            name = signal.Signals(self.stop.received).name
            raise Interrupted(self.stop.received, f"{name}: stopped at step "
                              f"{state.global_step} of {state.max_steps}; checkpoint saved in "
                              f"{self.folder / resume.CHECKPOINTS}; resume with: {resume_cmd}")

    def _finish_record(self, status: str, error: str | None = None) -> None:
        state, record, result = self.trainer.state, self.record, self.result
        evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
        record.metrics = {
            "steps": state.global_step, "max_steps": state.max_steps,
            "train_loss": result.training_loss if result else None,
            "eval_loss": evals[-1] if evals else None,
            "tokens_seen": state.num_input_tokens_seen,
            "train_runtime_s": result.metrics.get("train_runtime") if result else None,
            "wall_time_s": round(time.time() - self.started, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if self.device.type == "cuda" else None}
        record.device = self.device.type
        record.dtype = str(self.dtype).removeprefix("torch.")
        record.status, record.error, record.ended = status, error, time.time()
        write_run(self.folder, record)

    # --- save ----------------------------------------------------------------------------

    def save(self) -> Path:
        import shutil

        from unitune.train.callbacks import plot_loss

        self.trainer.save_model(str(self.folder))  # (every process: FSDP / ZeRO-3 gather)
        if distributed.is_main():
            if self.init_state is not None:  # lets later runs share this initialisation
                from safetensors.torch import save_file

                save_file(self.init_state, str(self.folder / methods.INIT_FILE))
            self.tokenizer.save_pretrained(str(self.folder))
            self.template.save(self.folder)
            plot_loss(self.folder / "metrics.jsonl", self.folder / "loss.png",
                      title=f"{self.staging.out.name}: loss")
            shutil.rmtree(self.folder / resume.CHECKPOINTS, ignore_errors=True)
            (self.folder / "training_args.bin").unlink(missing_ok=True)
        self._finish_record("finished")
        distributed.barrier()
        return self.staging.commit()


    def close(self) -> None:
        """Leave the process group, once nothing holds it (gloo's worker threads otherwise
        abort the process at exit)."""
        import gc

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        self.trainer.accelerator.free_memory()
        del self.trainer, self.model
        gc.collect()
        dist.destroy_process_group()


def trainable_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts virtual tokens right
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


class RunTrainer(Trainer):
    """The HF Trainer, with a method that is neither a PEFT adapter nor a whole model
    (bottleneck adapters) saving and restoring its own weights in checkpoints."""

    def __init__(self, *args, method: methods.Method, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        if self.method.native_checkpoints:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            self.method.save(model, Path(output_dir), state_dict)
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.method.native_checkpoints:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.method.load_weights(model or self.model, Path(resume_from_checkpoint))
        return None
