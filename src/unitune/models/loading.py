"""Loading base models and tokenizers: the pieces ``run.open_model`` and training assemble.

Owns resolving a model name (a unitune preset, a local Hugging Face folder, or a hub id), the
dtype/device choice (each process of a multi-process run on its own GPU), and loading a base
model (optionally quantized) and its tokenizer. Weights are read from
safetensors; ``trust_remote_code`` is passed only when the user asks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unitune import distributed
from unitune.errors import UserError


def resolve_model_path(name: str, log=print, progress: bool = True) -> str:
    """A preset name is built/cached on first use; a local folder or hub id is returned as is."""
    from unitune.models.tiny import PRESETS, ensure_preset

    if name in PRESETS:
        return str(ensure_preset(name, log=log, progress=progress))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            hint = " (a run with an adapter: `unitune merge` it into a model first)" \
                if (path / "adapter_config.json").exists() else ""
            raise UserError(f"{path}: neither a unitune run nor a Hugging Face model folder "
                            f"(no run.json or config.json){hint}")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise UserError(f"model folder not found: {name}")
    return name  # a hub id; from_pretrained reports if it cannot be fetched


def describe_base(name: str, trust_remote_code: bool = False, log=print):
    """(where the tokenizer of model ``name`` is, the tokenizer, the model's config), without
    loading any weights; a preset builds only its tokenizer (its weights come with
    ``resolve_model_path``)."""
    from unitune.models.tiny import PRESETS, get_preset, preset_config, preset_tokenizer

    if name in PRESETS:
        folder = str(preset_tokenizer(name, log=log))
        tokenizer = load_tokenizer(folder)
        return folder, tokenizer, preset_config(get_preset(name), tokenizer)
    path = resolve_model_path(name, log=log)
    return path, load_tokenizer(path, trust_remote_code), model_config(path, trust_remote_code)


def pick_device(device: str = "auto") -> torch.device:
    """The device of this process: its own GPU under torchrun / accelerate launch."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but no CUDA GPU is available; "
                            "use device=cpu or device=auto")
        return torch.device("cuda", distributed.local_rank())
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise UserError(f"cannot load a tokenizer from '{path}': {str(exc).splitlines()[0]}") \
            from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str, dtype: torch.dtype, device: torch.device,
              trust_remote_code: bool = False, quantize: str | None = None,
              rope_scaling: dict | None = None, head: str = "causal"):
    """A causal LM (or an encoder-decoder such as T5) from safetensors, or with ``head``
    'reward' the same network under a one-output scoring head (a reward model; the head is
    new unless the folder holds one); ``quantize`` '4bit' (NF4, double quantization, compute
    in ``dtype``) or '8bit' loads it through bitsandbytes on the GPU. ``rope_scaling``
    (``models/rope.py``) is written into the config first. Under DeepSpeed ZeRO-3 (its config
    already given to the Trainer's arguments) the weights load partitioned and stay where
    DeepSpeed puts them."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    kwargs = {}
    if quantize:
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UserError(f"{quantize} loading needs bitsandbytes: {exc}") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype) if quantize == "4bit" else \
            BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": (device.index or 0) if device.type == "cuda" else device.type}
    try:
        config = model_config(path, trust_remote_code)
        if rope_scaling:
            from unitune.models.rope import apply

            apply(config, rope_scaling)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) \
            else AutoModelForCausalLM
        if head == "reward":
            auto, config.num_labels = AutoModelForSequenceClassification, 1
        model = auto.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load model '{path}': {str(exc).splitlines()[0]} (offline? "
                        "give a local folder with config.json and *.safetensors)") from None
    except ImportError as exc:
        raise UserError(f"cannot load model '{path}': {str(exc).splitlines()[0]}") from None
    from transformers.integrations import is_deepspeed_zero3_enabled

    return model if quantize or is_deepspeed_zero3_enabled() else model.to(device)


def is_scorer(model) -> bool:
    """Whether ``model`` carries a scoring head (a reward model) rather than a language-model
    head."""
    return type(model).__name__.endswith("ForSequenceClassification")


def model_fingerprint(path: str) -> str:
    """What identifies a local model without reading its weights (its config and the names
    and sizes of its weight files), or a run's adapter (its config and the content of its
    weights, which are small and may be retrained at the same size); a hub id is its name."""
    import hashlib

    folder = Path(path)
    config = next((folder / name for name in ("config.json", "adapter_config.json")
                   if (folder / name).is_file()), None)
    if config is None:
        return path
    parts = [config.read_text(encoding="utf-8")]
    for weights in sorted(folder.glob("*.safetensors")):
        parts.append(f"{weights.name}:{weights.stat().st_size}")
        if config.name == "adapter_config.json":
            parts.append(hashlib.sha256(weights.read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def model_config(model_path: str, trust_remote_code: bool = False):
    """The model's ``PretrainedConfig`` (architecture, ``model_type``, encoder-decoder or not),
    read without loading any weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the config of '{model_path}': "
                        f"{str(exc).splitlines()[0]}") from None


def resolve_template(name: str, model_type: str | None, tokenizer):
    """The named template, or for ``auto`` the model's (see ``models.families``)."""
    from unitune.data.templates import get_template
    from unitune.models.families import default_template

    if name == "auto":
        name = default_template(model_type, tokenizer)
    return get_template(name)
