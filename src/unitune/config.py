"""The typed run configuration: YAML file + ``key=value`` overrides + flags, validated.

Owns the schema (``TrainConfig`` and its sections), loading and merging configuration sources,
and turning validation failures into one-line errors that name the key, what was given and
what is allowed, with a "did you mean" hint for misspelled keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator

from unitune.errors import UserError, did_you_mean

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Targets = list[str] | Literal["auto", "all-linear"]


class LoraConfig(Section):
    """LoRA hyper-parameters (lora, rslora, dora, qlora, adalora; ``peft.LoraConfig``)."""

    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Targets = Field(
        "auto", description="module names, 'all-linear', or 'auto' (the model family's "
        "attention + MLP projections)")


class AdaLoraSection(Section):
    """AdaLoRA's rank schedule (``peft.AdaLoraConfig``); lora.alpha/dropout/targets apply."""

    init_r: int = Field(12, gt=0, description="starting rank of every module")
    target_r: int = Field(8, gt=0, description="average rank after pruning")
    tinit: float = Field(0.1, ge=0, description="warm-up before pruning: steps or fraction")
    tfinal: float = Field(0.2, ge=0, description="final fine-tuning at the target budget")
    delta_t: int = Field(10, gt=0, description="steps between two budget allocations")
    beta1: float = Field(0.85, gt=0, lt=1)
    beta2: float = Field(0.85, gt=0, lt=1)
    orth_reg_weight: float = Field(0.5, ge=0)


class PromptSection(Section):
    """prefix / p_tuning / prompt: virtual tokens prepended to every input."""

    num_virtual_tokens: int = Field(20, gt=0)
    encoder_hidden_size: int = Field(128, gt=0, description="p_tuning's prompt encoder width")
    init_text: str | None = Field(None, description="prompt tuning: initialise from this text")


class IA3Section(Section):
    target_modules: Targets = "auto"
    feedforward_modules: list[str] = Field(default_factory=list)


class AdapterSection(Section):
    """Bottleneck adapters (adapter_seq, adapter_par)."""

    bottleneck_size: int = Field(64, gt=0)
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="adapter_seq: after attention and MLP (houlsby) or MLP only")
    scaling: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    target_modules: list[str] | Literal["auto"] = "auto"


class FreezeSection(Section):
    """freeze: train only the last N decoder blocks (and the named modules)."""

    trainable_layers: int = Field(2, ge=0)
    modules: list[str] = Field(default_factory=list)


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


class TrainConfig(Section):
    """Supervised fine-tuning of a causal LM on instruction data."""

    base_model: str = Field("tiny-llama",
                            description="a unitune preset, a local HF folder, or a hub id")
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
    method: Literal["lora", "rslora", "dora", "qlora", "adalora", "prefix", "p_tuning", "prompt",
                    "ia3", "adapter_seq", "adapter_par", "full", "freeze"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    adalora: AdaLoraSection = Field(default_factory=AdaLoraSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    ia3: IA3Section = Field(default_factory=IA3Section)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    freeze: FreezeSection = Field(default_factory=FreezeSection)
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
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="warm-up steps (>=1) or fraction of steps (<1)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    logging_steps: int = Field(10, gt=0)
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
            "[]" if field.default_factory is list else repr(field.default)
        choices = "|".join(map(str, get_args(ann))) if get_origin(ann) is Literal else None
        lines.append(f"  {key} ({default})"
                     + (f" [{choices}]" if choices else "")
                     + (f": {field.description}" if field.description else ""))
    return lines


def describe_error(err: dict, schema: type[BaseModel], source: str) -> str:
    """One line for one pydantic error: where, which key, what was given, what is allowed."""
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return (f"{source}: unknown config key '{key}'"
                f"{did_you_mean(key, _model_keys(schema))}")
    if err["type"] == "missing":
        return f"{source}: required config key '{key}' is missing"
    given = err.get("input")
    msg = err["msg"][0].lower() + err["msg"][1:]
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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    return data


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
