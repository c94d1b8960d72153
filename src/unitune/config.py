"""The typed run configuration: YAML file + ``key=value`` overrides + flags, validated.

Owns the schema (``TrainConfig``: the general keys here, plus the section of every registered
method, e.g. ``lora:``, and of every stage, e.g. ``dpo:``, which each brings), loading and
merging configuration sources, and turning validation failures into one-line errors that
name the key, what was given and what is allowed, with a "did you mean" hint for misspelled
keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    ValidationError,
    create_model,
    field_validator,
)

from unitune import methods
from unitune.errors import UserError, closest, did_you_mean
from unitune.models.rope import RopeScaling
from unitune.sections import Section, load_yaml
from unitune.train import stages

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class DataSpec(Section):
    """One data source: a local file or folder, a catalog name, or a hub dataset id."""

    path: str
    format: str | None = Field(None, description="reader format (default: data_format)")
    weight: float | None = Field(None, ge=0, description="relative share when mixing")
    count: int | None = Field(None, ge=0, description="exact number of records to take")


class AugmentConfig(Section):
    """FLAN-style template augmentation, few-shot rendering and CoT prompting."""

    flan_templates: str | None = Field(None, description="FLAN template JSON file")
    zero_shot_ratio: float = Field(1.0, ge=0, le=1,
                                   description="share of examples kept zero-shot")
    k_shot: int = Field(0, ge=0, description="examples shown in a few-shot rendering")
    cot_suffix: Literal["en", "zh"] | None = Field(
        None, description="append 'Let's think step by step.' (en) or '先思考，再决定。' (zh)")


def _data_list(value: Any) -> Any:
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, str):
                out += [{"path": p.strip()} for p in item.split(",") if p.strip()]
            else:
                out.append(item)
        return out
    return value


class TrainKeys(Section):
    """The keys of a training run that do not belong to one method."""

    stage: str = Field("sft", description="; ".join(f"{s.name}: {s.summary}"
                                                     for s in stages.STAGES.values()))
    base_model: str = Field("tiny-llama",
                            description="a unitune preset, a local HF folder, or a hub id")
    rope_scaling: RopeScaling | None = Field(None, description="stretch the context: {type: "
                                             "linear|dynamic|yarn, factor: 4}")
    tokenizer: str | None = Field(None, description="a tokenizer folder instead of the base's "
                                  "(e.g. from `unitune vocab extend`); the embeddings grow "
                                  "to its size")
    data: list[DataSpec] = Field(..., min_length=1,
                                 description="files, catalog names or hub ids (comma-separated)")
    validation_data: list[DataSpec] = Field(default_factory=list)
    data_format: str = Field("auto", description="reader format; auto detects per file")
    data_dir: str | None = Field(None, description="where catalog datasets were downloaded")
    validation_split: float = Field(0, ge=0, description="fraction (<1) or count of training "
                                    "records held out for validation")
    mix_total: int | None = Field(None, gt=0, description="total records when mixing by weight")
    dedupe: bool = False
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    output_dir: str = Field(..., description="run folder to create")
    template: str = Field("auto", description="prompt template; auto = the model family's")
    masking: Literal["assistant", "last", "all"] = Field(
        "assistant", description="train on every assistant reply, the last one, or everything")
    packing: bool = Field(False, description="pack short examples into max_length rows")
    data_workers: int | None = Field(None, gt=0, description="processes that tokenize; "
                                     "default one per 50,000 records, up to one per CPU")
    method: str = Field("lora", description="fine-tuning method: "
                        + ", ".join(methods.names()))
    init_adapter: str | None = Field(None, description="start the adapter from this run's "
                                     "initial adapter (shared init for module arithmetic)")
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained "
                                       "fully beside an adapter (e.g. embed_tokens, lm_head)")
    load_in: Literal["none", "8bit", "4bit"] = Field("none", description="quantized base "
                                                     "(bitsandbytes, CUDA only)")
    gradient_checkpointing: bool | NonNegativeInt = Field(
        False, description="recompute activations in the backward pass: true (every layer), "
        "false, or N (the first N layers)")
    offload_activations: bool = Field(
        False, description="keep what checkpointed layers save in pinned CPU memory (needs "
        "gradient_checkpointing): the low-memory mode")
    kernels: Literal["auto", "none"] = Field("auto", description="fused GPU kernels "
                                             "(liger-kernel) and leaner LoRA layers where they "
                                             "apply; none: stock modules")
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = Field(
        "auto", description="attention kernel; auto: FlexAttention's block-sparse mask for "
        "packed rows on a GPU, else the model's default (SDPA)")
    max_length: int = Field(512, gt=8)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many steps (-1: use epochs)")
    batch_size: int = Field(8, gt=0, description="examples per forward pass across all "
                            "processes (each of N processes takes batch_size / N)")
    grad_accum: int = Field(1, gt=0, description="forward passes per optimizer step")
    lr: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="warm-up steps (>=1) or fraction of steps (<1)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0, description="write a checkpoint every N optimizer steps "
                            "(and at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="how many of the newest checkpoints "
                                  "to keep while training")
    fsdp: bool = Field(False, description="shard weights, gradients and optimizer state over "
                       "the processes (PyTorch FSDP2): full fine-tuning of models larger than "
                       "one GPU")
    deepspeed: str | None = Field(None, description="DeepSpeed: zero2, zero3 (shipped "
                                  "configs) or a JSON config file")
    skip_invalid: bool = Field(False, description="skip invalid records (reported) instead of "
                               "stopping at the first")
    trust_remote_code: bool = False
    overwrite: bool = False

    @field_validator("data", "validation_data", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return _data_list(value)

    @field_validator("validation_split")
    @classmethod
    def _split_value(cls, value: float) -> float | int:
        if value >= 1 and value != int(value):
            raise ValueError("a count of records (a whole number) or a fraction below 1")
        return int(value) if value >= 1 else value

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value not in stages.STAGES:
            raise ValueError(f"unknown stage{did_you_mean(value, stages.STAGES)}; choose one of "
                             f"{', '.join(stages.STAGES)}")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in methods.names():
            raise ValueError(f"unknown method{did_you_mean(value, methods.names())}; choose "
                             f"one of {', '.join(methods.names())}")
        return value


# the general keys and the config section each registered method (lora:, ...) and each stage
# (dpo:, rl:, ...) reads
TrainConfig = create_model(
    "TrainConfig", __base__=TrainKeys, __module__=__name__,
    **{key: (schema, Field(default_factory=schema))
       for key, schema in {**methods.config_sections(), **stages.config_sections()}.items()})
TrainConfig.__doc__ = ("Fine-tuning a model: the general keys, every method's section and "
                       "every stage's section.")


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every local path it names made absolute (catalog names and hub ids stay),
    so a stored config means the same from any working directory."""

    def local(value: str | None) -> str | None:  # (links are kept: the user's names stay)
        if value is None:
            return None
        path = Path(value).expanduser()
        return os.path.abspath(path) if path.exists() else value

    def specs(items: list[DataSpec]) -> list[DataSpec]:
        return [s.model_copy(update={"path": local(s.path)}) for s in items]

    return cfg.model_copy(update={
        "data": specs(cfg.data), "validation_data": specs(cfg.validation_data),
        "base_model": local(cfg.base_model), "init_adapter": local(cfg.init_adapter),
        "tokenizer": local(cfg.tokenizer),
        "deepspeed": local(cfg.deepspeed), "data_dir": local(cfg.data_dir),
        "augment": cfg.augment.model_copy(
            update={"flan_templates": local(cfg.augment.flan_templates)}),
        "output_dir": os.path.abspath(Path(cfg.output_dir).expanduser())})


def _fields(schema: type[BaseModel], prefix: str = ""):
    """(dotted key, field, is a section) of every config key, sections before their keys."""
    for name, field in schema.model_fields.items():
        ann = field.annotation
        section = isinstance(ann, type) and issubclass(ann, BaseModel)
        yield prefix + name, field, section
        if section:
            yield from _fields(ann, prefix + name + ".")


def _model_keys(schema: type[BaseModel]) -> list[str]:
    return [key for key, _, _ in _fields(schema)]


def describe_keys(schema: type[BaseModel]) -> list[str]:
    """One line per leaf config key: its name, default and description (for ``--help``)."""
    lines = []
    for key, field, section in _fields(schema):
        if section:
            continue
        ann = field.annotation
        default = "required" if field.is_required() else \
            repr(field.get_default(call_default_factory=True))
        choices = "|".join(map(str, get_args(ann))) if get_origin(ann) is Literal else None
        lines.append(f"  {key} ({default})"
                     + (f" [{choices}]" if choices else "")
                     + (f": {field.description}" if field.description else ""))
    return lines


# what users of the HF Trainer, PEFT, LLaMA-Factory and Axolotl call our keys: a hint, not a
# second spelling (one name per setting)
OTHER_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
               "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
               "gradient_accumulation_steps": "grad_accum", "cutoff_len": "max_length",
               "sequence_len": "max_length", "max_seq_length": "max_length",
               "model_name_or_path": "base_model", "warmup_ratio": "warmup",
               "warmup_steps": "warmup", "lr_scheduler_type": "lr_scheduler",
               "finetuning_type": "method", "dataset": "data", "datasets": "data",
               "save_total_limit": "keep_checkpoints", "lora_r": "lora.r", "lora_rank": "lora.r",
               "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
               "lora_target": "lora.target_modules", "lora_target_modules": "lora.target_modules",
               "target_modules": "lora.target_modules", "bf16": "dtype", "fp16": "dtype"}


def _key_hint(key: str, keys: list[str]) -> str:
    """' (did you mean ...?)' for a misspelled key or another tool's name for one."""
    ours = OTHER_NAMES.get(key)  # another tool's name, then a misspelling of ours or of it
    if ours not in keys:
        ours = closest(key, keys) or OTHER_NAMES.get(closest(key, OTHER_NAMES, 0.8) or "")
    return f" (did you mean '{ours}'?)" if ours in keys else ""


def describe_error(err: dict, schema: type[BaseModel], source: str) -> str:
    """One line for one pydantic error: where, which key, what was given, what is allowed."""
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{key}'{_key_hint(key, _model_keys(schema))}"
    if err["type"] == "missing":
        return f"{source}: required config key '{key}' is missing"
    given = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    return f"{source}: config key '{key}': {msg} (got {given!r})"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value parsed as YAML, so numbers and lists get types)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise UserError(f"override '{text}' has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):
        value = raw
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 as a string
    return key.split("."), value


def set_nested(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def build_config(schema: type[BaseModel], config_file: str | None, overrides: list[str],
                 flags: dict[str, Any]) -> BaseModel:
    """Merge (lowest first) the YAML file, ``key=value`` overrides and explicit flags; validate."""
    data: dict = load_yaml(config_file) if config_file else {}
    source = str(config_file) if config_file else "command line"
    for item in overrides:
        path, value = parse_override(item)
        set_nested(data, path, value)
    for key, value in flags.items():
        if value is not None:
            set_nested(data, key.split("."), value)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_error(exc.errors()[0], schema, source)) from None


def write_config(config: BaseModel, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False,
                                   allow_unicode=True), encoding="utf-8")
