"""Supervised fine-tuning with any method: the loop around the HF Trainer and its run folder.

A run is built in ``<output_dir>.partial`` and moved into place only when it has finished, so a
crash or Ctrl-C never leaves a half-run that looks complete, and ``--overwrite`` replaces an
old run only once the new one exists. The run folder holds the adapter (PEFT format), the
tokenizer, ``template.json``, the effective ``config.yaml``, ``run.json`` (what was trained, on
what, with which results), ``metrics.jsonl``, TensorBoard events in ``tb/`` and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from unitune.config import TrainConfig, write_config
from unitune.data.encode import Collator, Packed, encode_records
from unitune.data.sources import build_datasets
from unitune.data.templates import get_template
from unitune.errors import UserError
from unitune.methods import INIT_FILE
from unitune.methods import registry as methods
from unitune.models.loading import (
    RUN_FILE,
    load_base,
    load_tokenizer,
    model_config,
    move_into_place,
    pick_device,
    pick_dtype,
    resolve_model_path,
    resolve_template,
)
from unitune.train import checkpointing, speed


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a finished run (or any non-empty folder) unless ``overwrite``."""
    if not out.exists() or overwrite:
        if out.exists() and not out.is_dir():
            raise UserError(f"output path {out} exists and is not a folder")
        return
    if (out / RUN_FILE).exists():
        raise UserError(f"{out} already holds a finished run; pick another output_dir or pass "
                        "--overwrite to replace it")
    if any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; pick another output_dir or pass "
                        "--overwrite")


def trainable_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts virtual tokens right
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def total_steps(cfg: TrainConfig, n_rows: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    # as the Trainer counts them (fractional epochs too)
    return max(1, math.ceil(cfg.epochs * math.ceil(n_rows / (cfg.batch_size * cfg.grad_accum))))


def train(cfg: TrainConfig, log=print, progress: bool = True,
          callbacks: list | None = None) -> Path:
    """Run SFT as configured and return the finished run folder. ``callbacks`` (transformers
    ``TrainerCallback``s) are added to the Trainer's."""
    started = time.time()
    out = Path(cfg.output_dir)
    check_output_dir(out, cfg.overwrite)
    if cfg.template != "auto":
        get_template(cfg.template)  # an unknown name fails before any data is read
    checkpointing.check(cfg.gradient_checkpointing, cfg.offload_activations)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        return _train(cfg, out, staging, started, log, progress, callbacks)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, out: Path, staging: Path, started: float, log, progress: bool,
           callbacks: list | None) -> Path:
    from transformers import Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback

    from unitune.train.callbacks import MetricsLogCallback, ProgressCallback, plot_loss

    workdir = staging / "data"  # the Arrow tables of this run's data, removed at the end
    train_records, val_records, data_report = build_datasets(cfg, workdir, log, progress)

    model_path = resolve_model_path(cfg.base_model, log=log, progress=progress)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    base_config = model_config(model_path, cfg.trust_remote_code)
    model_type = base_config.model_type
    methods.check(cfg, model_type, device)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    template = resolve_template(cfg.template, model_type, tokenizer)
    cfg = cfg.model_copy(update={"template": template.name})  # the effective config
    trained_on = {"assistant": "every assistant reply", "last": "the last assistant reply",
                  "all": "all tokens"}[cfg.masking]
    log(f"template: {template.name}; loss on {trained_on}{'; packing' if cfg.packing else ''}")
    seq2seq = bool(getattr(base_config, "is_encoder_decoder", False))
    if seq2seq and (cfg.packing or cfg.masking != "assistant"):
        raise UserError("an encoder-decoder model trains on the final reply given the prompt: "
                        "packing and masking other than 'assistant' do not apply")

    def encode(records, name):
        return encode_records(records, tokenizer, template, cfg.max_length, cfg.masking,
                              seq2seq, workdir / f"{name}-encoded.arrow", cfg.data_workers,
                              progress)

    train_rows, train_report = encode(train_records, "train")
    val_rows, val_report = encode(val_records, "validation") if val_records else (None, None)
    if cfg.packing:
        n_before = len(train_rows)
        train_rows = Packed(train_rows, cfg.max_length)
        log(f"packed {n_before} examples into {len(train_rows)} rows of <= {cfg.max_length} "
            "tokens")
    log(f"train data: {train_report.summary()}")
    if val_report:
        log(f"validation data: {val_report.summary()}")
    if not len(train_rows):
        raise UserError(f"every training example was dropped ({train_report.summary()}); "
                        f"raise max_length (now {cfg.max_length})")

    base = load_base(model_path, dtype, device, cfg.trust_remote_code,
                     quantize=methods.quantization(cfg), config=base_config)
    active = speed.optimize(base, cfg.kernels, cfg.attention, cfg.gradient_checkpointing,
                            cfg.offload_activations, cfg.packing)
    torch.manual_seed(cfg.seed)  # the adapter's initialisation is a function of the seed
    model, method_callbacks = methods.build(base, cfg, model_type,
                                            total_steps(cfg, len(train_rows)))
    active += speed.optimize_adapter(model, dtype, cfg.kernels)  # (16-bit runs autocast)
    log(f"optimizations: {'; '.join(active)}")
    has_adapter = cfg.method not in methods.WEIGHT_METHODS + methods.PROMPT_METHODS
    adapter_init = {"seed": cfg.seed}
    if cfg.init_adapter:
        if not has_adapter:
            raise UserError(f"init_adapter does not apply to method={cfg.method}")
        adapter_init = {"from": str(methods.load_init(model, cfg.method,
                                                      Path(cfg.init_adapter)))}
    init_state = methods.adapter_weights(model, cfg.method) if has_adapter else None
    trainable, total = trainable_parameters(model)
    log(f"method: {cfg.method}; trainable parameters: {trainable:,} of {total:,} "
        f"({100 * trainable / total:.2f}%)")

    from torch.utils.tensorboard import SummaryWriter

    metrics_path = staging / "metrics.jsonl"
    writer = SummaryWriter(log_dir=str(staging / "tb"))
    args = TrainingArguments(
        output_dir=str(staging / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_strategy="no", report_to=[],
        eval_strategy="epoch" if val_rows is not None else "no", seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu=device.type == "cpu", disable_tqdm=True,
        include_num_input_tokens_seen="all" if cfg.packing else "non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[ProgressCallback(disable=not progress), MetricsLogCallback(metrics_path),
                   TensorBoardCallback(tb_writer=writer), *method_callbacks,
                   *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # our bar and metrics log replace it
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    writer.close()
    methods.save(model, cfg, staging)
    if init_state is not None:  # lets later runs share this initialisation
        from safetensors.torch import save_file

        save_file(init_state, str(staging / INIT_FILE))
    tokenizer.save_pretrained(str(staging))
    template.save(staging)
    write_config(cfg, staging / "config.yaml")
    plot_loss(metrics_path, staging / "loss.png", title=f"{out.name}: loss")
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    info = {
        "status": "finished", "base_model": cfg.base_model, "base_model_path": model_path,
        "method": cfg.method, "quantization": methods.quantization(cfg),
        "template": template.name, "adapter_init": adapter_init,
        "trust_remote_code": cfg.trust_remote_code,
        "trainable_parameters": trainable, "total_parameters": total,
        "masking": cfg.masking, "packing": cfg.packing, "optimizations": active,
        "data": {**data_report.as_dict(), "train": train_report.as_dict(),
                 "validation": val_report.as_dict() if val_report else None},
        "train_loss": result.training_loss, "steps": result.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "wall_time_s": round(time.time() - started, 2), "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if device.type == "cuda" else None,
    }
    (staging / RUN_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    shutil.rmtree(workdir, ignore_errors=True)
    move_into_place(staging, out)
    return out
