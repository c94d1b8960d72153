"""Training a model: the recipe every stage runs (set up, train, save) around the HF Trainer.

- ``setup``: the run folder (``<output_dir>.partial``; a resume reopens it and checks that
  nothing that changes the result has changed), the prepared data (tokenised once, cached by
  content, before any process group exists), the Trainer's arguments (which start the process
  group), the base model with its patches, the fast path and the method, the record (status
  ``running``) and the effective ``config.yaml``, and the Trainer with the run's callbacks.
- ``train``: ``Trainer.train``, from the newest valid checkpoint when resuming. SIGTERM or
  SIGINT saves a checkpoint and stops (``Interrupted``); a crash keeps the partial run (its
  metrics and checkpoints) and says how to resume it.
- ``save``: the weights (gathered from every process), tokenizer, template, initial adapter
  and loss picture, the record (``finished``), the folder moved into place, and then the
  checkpoints removed.

Works unchanged under ``torchrun`` and ``accelerate launch``: ``batch_size`` is the batch of all
processes together, only the main process writes, and DDP, FSDP2 (``fsdp: true``) or DeepSpeed
(``deepspeed: zero2|zero3|file``) come from the Trainer. A single process uses one GPU.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import torch

from unitune import distributed, methods
from unitune.config import TrainConfig, with_absolute_paths, write_config
from unitune.data.templates import get_template
from unitune.errors import UserError
from unitune.run import (
    CONFIG_YAML,
    PARTIAL,
    RunRecord,
    Staging,
    base_config,
    check_foldable,
    check_replaceable,
    describe,
    grow_vocabulary,
    is_run,
    load_model_at,
    out_of,
    read_finished,
    read_run,
    stored_config,
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
        recipe.staging.discard()  # (only a folder this attempt created: never a partial run)
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
    if path.name.startswith("checkpoint-") and path.parent.name == resume.CHECKPOINTS:
        if not path.is_dir():
            raise UserError(f"--resume {path}: no such checkpoint")
        return path.parent.parent, path
    if not is_run(path) and is_run(Staging(path).path):  # the run's name, not its .partial
        path = Staging(path).path
    if not path.exists():
        raise UserError(f"--resume {path}: no such folder")
    if not is_run(path):
        raise UserError(f"--resume {path}: not a unitune run or checkpoint (no run.json)")
    if read_run(path).status == "finished":
        raise UserError(f"--resume {path}: the run is finished; there is nothing to resume")
    if not path.name.endswith(PARTIAL):
        raise UserError(f"--resume {path}: not an unfinished run folder (<output_dir>{PARTIAL})")
    return path, None


def resume_config(target: str, output_dir: str | None) -> tuple[str, str]:
    """For ``--resume PARTIAL_RUN`` without a config: (the run's config file, its output
    folder), so the run resumes where it is, whatever the current directory."""
    folder, _ = resume_folder(target, output_dir or "")
    out = str(out_of(folder))
    if output_dir and Path(output_dir).resolve() != Path(out).resolve():
        raise UserError(f"--resume {target}: that run's output folder is {out}, not "
                        f"{output_dir}")
    stored_config(folder)  # (there, and readable)
    return str(folder / CONFIG_YAML), out


class Recipe:
    def __init__(self, cfg: TrainConfig, log, progress: bool, callbacks: list):
        self.cfg = cfg  # (read with the user's own paths, so messages name them)
        self.progress, self.extra_callbacks = progress, callbacks
        self.log = log if distributed.is_main() else (lambda *a, **k: None)
        self.stage = stages.get(cfg.stage)
        self.method = methods.get(cfg.method)
        self.staging = Staging(Path(cfg.output_dir), cfg.overwrite)
        self.started = time.time()
        self.trainer = self.result = None

    # --- set up --------------------------------------------------------------------------

    def setup(self, resume_from: bool | str | Path, force: bool) -> None:
        cfg, log = self.cfg, self.log
        self.resuming, self.force = bool(resume_from), force
        self._check()
        self.checkpoint = None
        if self.resuming:
            folder, named = resume_folder(resume_from, cfg.output_dir)
            if folder.resolve() != self.staging.path.resolve():
                raise UserError(f"--resume {folder}: that run belongs to output_dir "
                                f"{out_of(folder)}, "
                                f"not {cfg.output_dir}")
            self.record = read_run(folder)
            self.staging.open(resume=True)
            if named is not None and (problem := resume.checkpoint_problem(named)):
                raise UserError(f"--resume {named}: {problem}")
            self.checkpoint = named or resume.newest_valid(folder, log)
            if self.checkpoint is None:
                log(f"warning: {folder} has no valid checkpoint; training starts from step 0")
        else:
            self.staging.open()
            masking, packing = self.stage.loss(cfg)
            self.record = RunRecord(kind=self.stage.name, method=cfg.method,
                                    base_model=cfg.base_model, template=cfg.template,
                                    masking=masking, packing=packing)
        self.folder = self.staging.path
        self._setup_data()
        self.args = self._training_arguments()  # (starts the process group, if any)
        self._setup_model()
        self._write_run_files()
        self._setup_trainer()

    def _check(self) -> None:
        from unitune.data.sources import resolve_files

        cfg = self.cfg
        check_replaceable(self.staging.out, cfg.overwrite)
        if is_run(Path(cfg.base_model)):  # a run to start from: finished, of a kind that fits
            self.stage.check_base(read_finished(cfg.base_model).kind, cfg.base_model)
            check_foldable(Path(cfg.base_model), bool(self.method.base_quantization(cfg)),
                           bool(cfg.rope_scaling), bool(cfg.deepspeed))
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
        sharded = "fsdp=true" if cfg.fsdp else f"deepspeed={cfg.deepspeed}" \
            if cfg.deepspeed else None
        if sharded and (cfg.device == "cpu" or not torch.cuda.is_available()):
            raise UserError(f"{sharded} shards training over GPUs and needs CUDA (on the CPU "
                            "accelerate would quietly fall back to DDP); leave it off here")
        if sharded and not self.method.shardable:
            raise UserError(f"{sharded} does not work with method={cfg.method}; train it with "
                            "DDP (torchrun without fsdp/deepspeed)")
        if sharded and self.method.base_quantization(cfg):
            raise UserError(f"{sharded} with a quantized base is not supported; use DDP")
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

    def _refuse(self, what: str, changes: list[str]) -> None:
        """Refuse to resume because ``what`` changed (or warn, when forced)."""
        if not changes:
            return
        listed = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more"
                                            if len(changes) > 5 else "")
        if self.force:
            self.log(f"warning: resuming although the {what} changed ({listed})")
            return
        raise UserError(f"cannot resume {self.staging.path}: the {what} changed since it "
                        f"started ({listed}); resume with the original ones, or pass "
                        "--force-resume to continue anyway")

    def _setup_data(self) -> None:
        from unitune.data import cache
        from unitune.models.loading import (
            load_tokenizer,
            pick_device,
            pick_dtype,
            resolve_template,
        )

        cfg, log, record = self.cfg, self.log, self.record
        tokenizer_path, self.tokenizer, base_config = describe(
            cfg.base_model, cfg.trust_remote_code, log)
        if cfg.tokenizer:  # (an extended vocabulary: the embeddings grow at model setup)
            base_tokenizer = self.tokenizer
            self.tokenizer = load_tokenizer(cfg.tokenizer, cfg.trust_remote_code)
            log(f"tokenizer: {cfg.tokenizer} ({len(self.tokenizer):,} tokens)")
            self._check_extends(base_tokenizer)
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.model_type = base_config.model_type
        self.seq2seq = bool(getattr(base_config, "is_encoder_decoder", False))
        self.method.check(cfg, self.model_type, self.device)
        self.stage.check(cfg, self.seq2seq)
        template = cfg.template
        if template == "auto" and is_run(Path(tokenizer_path)):  # a fine-tuned run as base:
            base_run = read_run(tokenizer_path)                    # the chat format it learned
            if base_run.kind != "pt" and base_run.template:
                template = base_run.template
        self.template = resolve_template(template, self.model_type, self.tokenizer)
        self.stage.check_tokenizer(cfg, self.tokenizer, self.template)
        # what is stored and compared: the same from any working directory
        self.effective = with_absolute_paths(cfg).model_copy(
            update={"template": self.template.name})
        key = cache.data_key(self.effective, self.tokenizer, self.template, self.seq2seq)
        if self.resuming:  # refuse what would change the result, before any long work
            current = self.effective.model_dump(mode="json")
            self._refuse("settings", resume.config_changes(stored_config(self.folder), current))
            if record.data_fingerprint != key:
                self._refuse("data", ["the data files, tokenizer or template differ"])
            if self.checkpoint is not None:
                made = resume.manifest(self.checkpoint)
                self._refuse("checkpoint's run", resume.config_changes(made["config"], current))
            world = distributed.world_size()
            if record.world_size != world:
                self._refuse("number of processes", [f"{record.world_size} -> {world} (the "
                             "data order and each process's random state differ)"])
            if record.base_fingerprint != self._base()[1]:
                self._refuse("base model", [f"{cfg.base_model} holds other weights"])
        record.template, record.data_fingerprint = self.template.name, key
        record.trust_remote_code, record.world_size = cfg.trust_remote_code, \
            distributed.world_size()
        log(f"stage: {cfg.stage}; template: {self.template.name}; loss on "
            f"{self.stage.trains_on(record.masking)}{'; packing' if record.packing else ''}")
        # before any process group exists: tokenising may take longer than a collective waits
        prepared = cache.prepared(key, self.stage.build(cfg, self.tokenizer, self.template,
                                                        self.seq2seq, self.progress), log)
        record.data = prepared.report
        self._check_positions(base_config, prepared.train, Path(tokenizer_path))
        self.train_rows = self.stage.train_set(prepared.train, cfg, log)
        self.val_rows = prepared.validation

    def _check_extends(self, base_tokenizer) -> None:
        """A warning when ``tokenizer=`` does not extend the base's vocabulary: the base's
        trained rows would be read for other tokens (the vocab extend workflow keeps every
        base id and appends)."""
        try:
            n, m = len(base_tokenizer), min(len(base_tokenizer), len(self.tokenizer))
            differ = n - m + sum(a != b for a, b in zip(
                base_tokenizer.convert_ids_to_tokens(list(range(m))),
                self.tokenizer.convert_ids_to_tokens(list(range(m))), strict=True))
        except Exception:  # (a remote-code tokenizer that cannot list its ids: no check)
            return
        if differ:
            self.log(f"warning: tokenizer={self.cfg.tokenizer} does not extend the base's "
                     f"vocabulary: {differ:,} of its first {n:,} ids are other tokens, so "
                     "the base's trained embeddings would be read for them; build it with "
                     "`unitune vocab extend --base <the base's tokenizer>`")

    def _check_positions(self, base_config, rows, base_path: Path) -> None:
        """A warning when training rows run past the positions the base was trained on (its
        ``max_position_embeddings``), unless its RoPE is scaled (by ``rope_scaling``, by the
        base's config, or by the base run it starts from)."""
        from unitune.data.encode import row_lengths
        from unitune.models.rope import context_length

        cfg = self.cfg
        positions = context_length(base_config)
        params = getattr(base_config, "rope_parameters", None) or {}
        scaled = cfg.rope_scaling or params.get("rope_type", "default") != "default" or (
            is_run(base_path) and "rope_scaling" in read_run(base_path).model_patches)
        # (a base run's scaling goes with it)
        if not positions or cfg.max_length <= positions or scaled:
            return
        # (the rows before packing: a packed row's positions restart at every example; a
        # preference stage's rows hold their parts instead)
        if "input_ids" not in (getattr(rows, "column_names", None) or []):
            return
        longest = int(row_lengths(rows).max(initial=0))
        if longest > positions:
            self.log(f"warning: max_length={cfg.max_length} lets rows run to {longest} tokens, "
                     f"past the {positions} positions {cfg.base_model} was trained on; lower "
                     f"max_length to {positions} or stretch the positions with rope_scaling")

    def _training_arguments(self):
        cfg, world = self.cfg, distributed.world_size()
        extra = {}
        if cfg.fsdp:  # (wraps the model's _no_split_modules, its decoder layers)
            extra.update(fsdp="full_shard auto_wrap", fsdp_config={
                "fsdp_version": 2, "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT"})
        if cfg.deepspeed:
            extra["deepspeed"] = self._deepspeed_config()
        args = self.stage.arguments(cfg, dict(
            output_dir=str(self.folder / resume.CHECKPOINTS),
            per_device_train_batch_size=cfg.batch_size // world,
            per_device_eval_batch_size=cfg.batch_size // world,
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
            include_num_input_tokens_seen="all" if self.record.packing else "non_padding",
            dataloader_num_workers=0, remove_unused_columns=False,
            ddp_find_unused_parameters=False, **extra))
        args._n_gpu = 1  # one process, one GPU: the Trainer's nn.DataParallel would multiply
        return args      # the batch by the GPUs it sees (more GPUs: torchrun)

    def _base(self) -> tuple[str, str]:
        """(the base model's folder (a preset is built now) or run, its fingerprint), found
        once."""
        from unitune.models.loading import model_fingerprint, resolve_model_path

        if not hasattr(self, "_base_found"):
            name = self.cfg.base_model
            path = str(Path(name).resolve()) if is_run(Path(name)) else \
                resolve_model_path(name, log=self.log, progress=self.progress)
            self._base_found = path, model_fingerprint(path)
        return self._base_found

    def _setup_model(self) -> None:
        cfg, log, record = self.cfg, self.log, self.record
        model_path, record.base_fingerprint = self._base()
        record.base_model_path = model_path
        record.quantization = self.method.base_quantization(cfg)
        torch.manual_seed(cfg.seed)  # the adapter's initialisation is a function of the seed
        # FSDP2 shards a model from the host: no process holds all of it on its GPU
        device = torch.device("cpu") if cfg.fsdp else self.device
        rope = None
        if cfg.rope_scaling:  # what the run records: the scaling with the base's length
            from unitune.models.rope import apply

            rope = apply(base_config(model_path, cfg.trust_remote_code),
                         cfg.rope_scaling.model_dump())
        # (a run to start from is folded into its base in memory)
        base = load_model_at(model_path, self.dtype, device, cfg.trust_remote_code,
                             record.quantization, rope, self.stage.head, log, self.progress)
        if self.stage.head == "reward":  # it scores each text's last token before padding
            base.config.pad_token_id = self.tokenizer.pad_token_id
        record.model_patches = self._patch_vocabulary(base)
        if rope:
            record.model_patches["rope_scaling"] = rope
            log(f"RoPE scaling: {rope['type']} x{rope['factor']:g} of "
                f"{rope['original_max_position_embeddings']} positions")
        kernels = cfg.kernels if self.stage.fast_path else "none"
        self.active = speed.optimize(base, kernels, cfg.attention,
                                     cfg.gradient_checkpointing, cfg.offload_activations,
                                     cfg.packing)
        self.args.use_liger_kernel = speed.LIGER in self.active  # (the Trainer applies them)
        self.model, self.method_callbacks = self.method.build(base, cfg, self.model_type)
        self.active += speed.optimize_adapter(self.model, self.dtype, kernels)
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

    def _write_run_files(self) -> None:
        """From here the run exists: a crash leaves it resumable."""
        record = self.record
        record.status, record.error = "running", None
        if self.checkpoint is not None:
            record.resumed_from.append(self.checkpoint.name)
            stale = [c for c in resume.checkpoints(self.folder)
                     if resume.step_of(c) > resume.step_of(self.checkpoint)]
            if stale and distributed.is_main():  # another trajectory: it would mix with ours
                self.log(f"removing {len(stale)} checkpoint(s) after {self.checkpoint.name}, "
                         "which this resume trains again")
                for folder in stale:
                    shutil.rmtree(folder)
        if distributed.is_main():
            write_config(self.effective, self.folder / CONFIG_YAML)
            write_run(self.folder, record)

    def _patch_vocabulary(self, base) -> dict:
        """Grow the embeddings when the tokenizer has more tokens than the base has rows."""
        rows = base.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) <= rows:
            return {}
        grow_vocabulary(base, len(self.tokenizer))
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

    def _setup_trainer(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback
        from transformers.trainer_callback import PrinterCallback

        from unitune.train.callbacks import EvaluateAtEnd, MetricsLogCallback, ProgressCallback

        step = resume.step_of(self.checkpoint) if self.checkpoint else 0
        self.stop = resume.StopOnSignal(self.log)
        stamp = {"data_fingerprint": self.record.data_fingerprint,
                 "config": self.effective.model_dump(mode="json")}
        callbacks = [self.stop, *self.method_callbacks,
                     resume.Checkpoints(self.folder, self.cfg.keep_checkpoints, stamp)]
        if self.val_rows is not None:
            callbacks.append(EvaluateAtEnd())
        self.writer = None
        if distributed.is_main():
            # a resume redoes the steps after its checkpoint: drop what was logged for them
            self.writer = SummaryWriter(log_dir=str(self.folder / "tb"),
                                        purge_step=step + 1 if self.resuming else None)
            callbacks += [ProgressCallback(disable=not self.progress),
                          MetricsLogCallback(self.folder / "metrics.jsonl",
                                             step if self.resuming else None),
                          TensorBoardCallback(tb_writer=self.writer)]
        trainer = with_method_checkpoints(self.stage.trainer_class())
        collator = self.stage.collator(self.tokenizer)
        self.trainer = trainer(
            method=self.method, model=self.model, args=self.args,
            train_dataset=self.train_rows, eval_dataset=self.val_rows,
            processing_class=self.tokenizer, callbacks=[*callbacks, *self.extra_callbacks],
            **({"data_collator": collator} if collator else {}),  # (else the trainer's own)
            **self.stage.trainer_kwargs(self.cfg, self.model, self.tokenizer, self.template,
                                        self.log))
        self.trainer.remove_callback(PrinterCallback)  # our bar and metrics log replace it

    # --- train ---------------------------------------------------------------------------

    def train(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        resume_cmd = f"unitune train --resume {self.folder}"
        if distributed.world_size() > 1:  # (a resume needs as many processes)
            resume_cmd = (f"the same launcher with {distributed.world_size()} processes in "
                          "all (nodes x processes per node) "
                          f"(torchrun / accelerate launch ... -m unitune.cli train --resume "
                          f"{self.folder})")
        if self.checkpoint is not None and resume.manifest(self.checkpoint)["final"]:
            self._load_final_checkpoint()  # every step was trained; only saving was left
            return
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
            self.stop.restore()
            if self.writer is not None:
                self.writer.close()
        state = self.trainer.state
        if self.stop.stopped_at is not None and state.global_step < state.max_steps:
            self._finish_record("interrupted")
            name = signal.Signals(self.stop.received).name
            raise Interrupted(self.stop.received, f"{name}: stopped at step "
                              f"{state.global_step} of {state.max_steps}; checkpoint saved in "
                              f"{self.folder / resume.CHECKPOINTS}; resume with: {resume_cmd}")

    def _load_final_checkpoint(self) -> None:
        from transformers import TrainerState

        self.trainer._load_from_checkpoint(str(self.checkpoint))
        self.trainer.state = TrainerState.load_from_json(
            str(self.checkpoint / "trainer_state.json"))
        self.log(f"{self.checkpoint.name} is the last step: saving the run")

    def _parallelism(self) -> str:
        """How the Trainer spread the model, as accelerate set it up and the model it trained
        shows it: 'none', 'MULTI_GPU: DistributedDataParallel', 'FSDP2: FSDPLlamaForCausalLM'
        (FSDP2 swaps the model's class in place), 'DEEPSPEED: DeepSpeedEngine'."""
        accelerator = self.trainer.accelerator
        kind = accelerator.distributed_type.value
        if kind == "NO":
            return "none"
        if kind == "FSDP" and getattr(accelerator, "is_fsdp2", False):
            kind = "FSDP2"
        return f"{kind}: {type(self.trainer.model_wrapped).__name__}"

    def _finish_record(self, status: str, error: str | None = None) -> None:
        state, record, result = self.trainer.state, self.record, self.result
        evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        record.metrics = {
            "steps": state.global_step, "max_steps": state.max_steps,
            "train_loss": result.training_loss if result else None,
            "last_logged_loss": losses[-1] if losses else None,
            "eval_loss": evals[-1] if evals else None,
            "tokens_seen": state.num_input_tokens_seen,
            "train_runtime_s": result.metrics.get("train_runtime") if result else None,
            "wall_time_s": round(time.time() - self.started, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if self.device.type == "cuda" else None,
            "parallelism": self._parallelism()}
        logged = {key: h[key] for h in state.log_history for key in self.stage.metrics
                  if key in h}  # (the last value of each)
        if logged:
            record.metrics["stage"] = logged
        record.device = self.device.type
        record.dtype = str(self.dtype).removeprefix("torch.")
        record.status, record.error, record.ended = status, error, time.time()
        write_run(self.folder, record)

    # --- save ----------------------------------------------------------------------------

    def save(self) -> Path:
        from unitune.train.callbacks import plot_loss

        self.trainer.save_model(str(self.folder))  # (every process: FSDP / ZeRO-3 gather)
        if distributed.is_main():
            if self.init_state is not None:  # lets later runs share this initialisation
                from safetensors.torch import save_file

                save_file(self.init_state, str(self.folder / methods.INIT_FILE))
            # its chat_template renders what was trained, for apply_chat_template and servers
            tokenizer = self.template.with_chat_template(self.tokenizer) \
                if self.stage.teaches_chat_format else self.tokenizer
            tokenizer.save_pretrained(str(self.folder))
            self.template.save(self.folder)
            plot_loss(self.folder / "metrics.jsonl", self.folder / "loss.png",
                      title=f"{self.staging.out.name}: loss")
            (self.folder / "training_args.bin").unlink(missing_ok=True)
        self._finish_record("finished")
        distributed.barrier()
        out = self.staging.commit()
        if distributed.is_main():  # (only now: until the run is in place they can resume it)
            shutil.rmtree(out / resume.CHECKPOINTS, ignore_errors=True)
        distributed.barrier()  # every process returns a run that is in place
        return out

    def close(self) -> None:
        """Leave the process group, once nothing holds it (gloo's worker threads otherwise
        abort the process at exit)."""
        import gc

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.trainer is not None:
            self.trainer.accelerator.free_memory()
        self.trainer = self.model = None
        gc.collect()
        dist.destroy_process_group()


def trainable_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts virtual tokens right
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def with_method_checkpoints(trainer_class: type) -> type:
    """``trainer_class`` (the HF Trainer, or the stage's TRL trainer), with a method it does
    not know (bottleneck adapters: neither a PEFT adapter nor a whole model) saving and
    restoring its own weights in checkpoints."""

    class RunTrainer(trainer_class):
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

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                self.method.save_training_state(
                    self.accelerator.unwrap_model(self.model),
                    Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            folder = Path(resume_from_checkpoint)
            if self.method.load_training_state(model or self.model, folder):
                return None
            if self.method.native_checkpoints:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            self.method.load_weights(model or self.model, folder)
            return None

    RunTrainer.__name__ = RunTrainer.__qualname__ = f"Run{trainer_class.__name__}"
    return RunTrainer
