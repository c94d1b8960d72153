"""Loading base models and tokenizers, and trained runs (base + adapter).

Owns resolving a model name (a unitune preset, a local Hugging Face folder, or a hub id), the
dtype/device choice, and re-opening a run folder with the template it was trained with.
Weights are read from safetensors; ``trust_remote_code`` is passed only when the user asks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from unitune.errors import UserError

RUN_FILE = "run.json"


def resolve_model_path(name: str, log=print, progress: bool = True) -> str:
    """A preset name is built/cached on first use; a local folder or hub id is returned as is."""
    from unitune.models.tiny import PRESETS, ensure_preset

    if name in PRESETS:
        return str(ensure_preset(name, log=log, progress=progress))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise UserError(f"model folder not found: {name}")
    return name  # a hub id; from_pretrained reports if it cannot be fetched


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but no CUDA GPU is available; "
                            "use device=cpu or device=auto")
        return torch.device("cuda")
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
              trust_remote_code: bool = False, quantize: str | None = None, config=None):
    """A causal LM (or an encoder-decoder such as T5) from safetensors; ``quantize`` '4bit'
    (NF4, double quantization, compute in ``dtype``) or '8bit' loads it through bitsandbytes on
    the GPU. ``config``: the model's config when the caller has read it already."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

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
        kwargs["device_map"] = {"": device.index or 0}
    try:
        if config is None:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) \
            else AutoModelForCausalLM
        model = auto.from_pretrained(
            path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load model '{path}': {str(exc).splitlines()[0]} (offline? "
                        "give a local folder with config.json and *.safetensors)") from None
    except ImportError as exc:
        raise UserError(f"cannot load model '{path}': {str(exc).splitlines()[0]}") from None
    return model if quantize else model.to(device)


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


def load_model(name: str, device: str = "auto", dtype: str = "auto", template: str = "auto",
               trust_remote_code: bool = False, log=print, progress: bool = True):
    """(base model in eval mode, tokenizer, template) for inference without an adapter."""
    path = resolve_model_path(name, log=log, progress=progress)
    dev = pick_device(device)
    model = load_base(path, pick_dtype(dtype, dev), dev, trust_remote_code).eval()
    tokenizer = load_tokenizer(path, trust_remote_code)
    return model, tokenizer, resolve_template(template, model.config.model_type, tokenizer)


def read_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.exists():
        raise UserError(f"{run_dir}: not a finished unitune run (no {RUN_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """(trained model, tokenizer, template) of a finished run, ready for inference."""
    from unitune.data.templates import load_template
    from unitune.methods import registry

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    dev = pick_device(device)
    model = registry.load(info["method"], info["base_model"], run_dir, pick_dtype(dtype, dev),
                          dev, info.get("trust_remote_code", False))
    model.eval()
    tokenizer = load_tokenizer(str(run_dir))
    return model, tokenizer, load_template(run_dir)


def move_into_place(staging: Path, out: Path) -> None:
    """Put a finished folder where it belongs: an old one is moved aside first and removed
    only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
