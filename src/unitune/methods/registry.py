"""Every fine-tuning method behind one name: checking it applies, building it, saving, loading.

PEFT does the methods it has (LoRA and its rsLoRA / DoRA / QLoRA variants, AdaLoRA with its
rank allocator called every step, prefix tuning, P-tuning, prompt tuning, IA3); bottleneck
adapters come from ``methods/bottleneck.py``; ``full`` trains every weight and ``freeze`` only
the last N decoder blocks (and named modules). Target modules default to the model family's
(``models/families.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from unitune.errors import UserError
from unitune.methods import INIT_FILE, WEIGHTS_FILE
from unitune.models.families import require_family

LORA_METHODS = ("lora", "rslora", "dora", "qlora", "adalora")
PEFT_METHODS = ("lora", "rslora", "dora", "qlora", "adalora", "prefix", "p_tuning", "prompt",
                "ia3")
BOTTLENECK_METHODS = ("adapter_seq", "adapter_par")
WEIGHT_METHODS = ("full", "freeze")  # save the whole model
METHODS = PEFT_METHODS + BOTTLENECK_METHODS + WEIGHT_METHODS
PROMPT_METHODS = ("prefix", "p_tuning", "prompt")


def quantization(cfg) -> str | None:
    """'4bit', '8bit' or None: what the base is loaded in."""
    if cfg.method == "qlora":
        return "4bit"
    return None if cfg.load_in == "none" else cfg.load_in


def check(cfg, model_type: str | None, device: torch.device) -> None:
    """Refuse a method that cannot work here, before any weights are loaded."""
    quant = quantization(cfg)
    if quant and device.type != "cuda":
        what = "QLoRA (a 4-bit base)" if cfg.method == "qlora" else f"{quant} loading"
        raise UserError(f"{what} needs a CUDA GPU with bitsandbytes; on this CPU use "
                        "method=lora (same adapter, unquantized base)")
    if quant and cfg.method not in (*LORA_METHODS, "ia3"):
        raise UserError(f"method={cfg.method} cannot train on a {quant} base; use lora/qlora")
    if cfg.method in PROMPT_METHODS and cfg.packing:
        raise UserError(f"method={cfg.method} prepends virtual tokens, which packing cannot "
                        "take; set packing=false")
    if cfg.method == "prefix":
        family = require_family(model_type, "prefix tuning support")
        if not family.prefix_ok:
            raise UserError(f"prefix tuning does not apply to '{model_type}' (its attention "
                            "takes no past key/values); use method=p_tuning or lora")
    if cfg.method == "adalora" and cfg.adalora.target_r > cfg.adalora.init_r:
        raise UserError(f"adalora.target_r ({cfg.adalora.target_r}) must be <= adalora.init_r "
                        f"({cfg.adalora.init_r})")


def _targets(value, model_type: str | None, default) -> list[str] | str:
    if value == "auto":
        return list(default(require_family(model_type, "target modules")))
    return value


def _ia3_targets(model_type):
    family = require_family(model_type, "IA3 target modules")
    att = [m for m in family.attention if m in ("k_proj", "v_proj")] or [family.attention[0]]
    return [*att, family.mlp[-1]], [family.mlp[-1]]


def prepare_quantized(model):
    """A k-bit base made ready for an adapter. PEFT's k-bit preparation upcasts every
    unquantized weight (embeddings, norms, LM head) to fp32, which fp16 training needs; a bf16
    base keeps them in bf16 (2 GiB less for an 8B model), as its matmuls run in bf16 under
    autocast either way. Checkpointing is set up before (train/checkpointing.py)."""
    import peft

    if model.dtype == torch.bfloat16:
        return model
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def build(model, cfg, model_type: str | None, total_steps: int):
    """The trainable model for ``cfg.method`` and the callbacks it needs during training."""
    import peft

    m = cfg.method
    callbacks = []
    if m in PEFT_METHODS:
        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        common = {"task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"}
        if m in LORA_METHODS:
            lo = cfg.lora
            targets = _targets(lo.target_modules, model_type, lambda f: f.linear)
            kw = dict(common, r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                      target_modules=targets, modules_to_save=cfg.modules_to_save or None,
                      use_rslora=m == "rslora", use_dora=m == "dora")
            if m == "adalora":
                ad = cfg.adalora
                kw.update(init_r=ad.init_r, target_r=ad.target_r, total_step=total_steps,
                          tinit=_steps(ad.tinit, total_steps), deltaT=ad.delta_t,
                          tfinal=_steps(ad.tfinal, total_steps), beta1=ad.beta1,
                          beta2=ad.beta2, orth_reg_weight=ad.orth_reg_weight)
                kw.pop("r")
                kw.pop("use_dora")
                config = peft.AdaLoraConfig(**kw)
                callbacks.append(AdaLoraAllocator())
            else:
                config = peft.LoraConfig(**kw)
        elif m == "ia3":
            targets, ff = _ia3_targets(model_type) if cfg.ia3.target_modules == "auto" else \
                (cfg.ia3.target_modules, cfg.ia3.feedforward_modules)
            config = peft.IA3Config(**common, target_modules=targets, feedforward_modules=ff,
                                    modules_to_save=cfg.modules_to_save or None)
        elif m == "prefix":
            config = peft.PrefixTuningConfig(**common,
                                             num_virtual_tokens=cfg.prompt.num_virtual_tokens)
        elif m == "p_tuning":
            config = peft.PromptEncoderConfig(
                **common, num_virtual_tokens=cfg.prompt.num_virtual_tokens,
                encoder_hidden_size=cfg.prompt.encoder_hidden_size)
        else:
            init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": cfg.prompt.init_text,
                    "tokenizer_name_or_path": cfg.base_model} if cfg.prompt.init_text else {}
            config = peft.PromptTuningConfig(**common, **init,
                                             num_virtual_tokens=cfg.prompt.num_virtual_tokens)
        if quantization(cfg):
            model = prepare_quantized(model)
        try:
            model = peft.get_peft_model(model, config)
        except ValueError as exc:
            raise UserError(f"method={m}: {str(exc).splitlines()[0]} (check the target "
                            "modules against the model's module names)") from None
        return model, callbacks
    if m in BOTTLENECK_METHODS:
        from unitune.methods import bottleneck

        family = require_family(model_type, "adapter placement") \
            if cfg.adapter.target_modules == "auto" else None
        if m == "adapter_par":
            kind = "parallel"
            targets = [family.mlp_block] if family else cfg.adapter.target_modules
        else:
            kind = "sequential"
            targets = (([family.attention[-1], family.mlp[-1]]
                        if cfg.adapter.placement == "houlsby" else [family.mlp[-1]])
                       if family else cfg.adapter.target_modules)
        bcfg = bottleneck.BottleneckConfig(
            kind=kind, target_modules=list(targets), bottleneck_size=cfg.adapter.bottleneck_size,
            scaling=cfg.adapter.scaling, dropout=cfg.adapter.dropout,
            non_linearity=cfg.adapter.non_linearity, placement=cfg.adapter.placement,
            base_model_name_or_path=cfg.base_model)
        bottleneck.inject(model, bcfg)
        _unfreeze(model, cfg.modules_to_save)
        model.unitune_bottleneck = bcfg
        return model, callbacks
    if m == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, callbacks
    # freeze: only the last N decoder blocks and the named modules train
    for p in model.parameters():
        p.requires_grad_(False)
    family = require_family(model_type, "layer layout")
    layers = model.get_submodule(family.layers)
    n = cfg.freeze.trainable_layers
    if n > len(layers):
        raise UserError(f"freeze.trainable_layers={n} but the model has {len(layers)} layers")
    for layer in list(layers)[len(layers) - n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    _unfreeze(model, cfg.freeze.modules + cfg.modules_to_save)
    return model, callbacks


def _unfreeze(model, names: list[str]) -> None:
    for name in names:
        matched = [mod for n, mod in model.named_modules() if n == name or n.endswith("." + name)]
        if not matched:
            raise UserError(f"module '{name}' (modules_to_save / freeze.modules) matches no "
                            "module of this model")
        for mod in matched:
            for p in mod.parameters():
                p.requires_grad_(True)


def _steps(value: float, total: int) -> int:
    return int(value) if value >= 1 else max(1, math.floor(value * total))


class AdaLoraAllocator(TrainerCallback):
    """Calls AdaLoRA's rank allocator after every optimizer step, before gradients are zeroed
    (what trainers commonly forget: without it AdaLoRA is plain LoRA with a larger rank)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        while not hasattr(model, "peft_config"):  # unwrap DDP / accelerate wrappers
            model = model.module
        model.base_model.update_and_allocate(state.global_step)


def adapter_weights(model, method: str) -> dict[str, torch.Tensor]:
    """The adapter's own weights (the same keys as its saved ``adapter_model.safetensors``)."""
    if method in PEFT_METHODS:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    elif method in BOTTLENECK_METHODS:
        from unitune.methods import bottleneck

        state = bottleneck.adapter_state(model)
    else:
        raise UserError(f"method={method} has no separate adapter weights")
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def load_init(model, method: str, folder: Path) -> Path:
    """Start ``model``'s adapter from the initial adapter of another run (the paper's shared
    initialisation): ``adapter_init.safetensors`` there, else its trained adapter."""
    from safetensors.torch import load_file

    path = folder / INIT_FILE
    if not path.exists():
        path = folder / WEIGHTS_FILE
    if not path.exists():
        raise UserError(f"init_adapter={folder}: no {INIT_FILE} or {WEIGHTS_FILE} there")
    state = load_file(str(path))
    mine = adapter_weights(model, method)
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise UserError(f"init_adapter={folder}: its adapter does not fit this one (different "
                        "method, target modules or rank)")
    set_adapter_weights(model, method, state)
    return path


def set_adapter_weights(model, method: str, state: dict[str, torch.Tensor]) -> None:
    """Replace the adapter's weights in place (keys as in ``adapter_weights``)."""
    if method in PEFT_METHODS:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def save(model, cfg, folder: Path) -> None:
    if cfg.method in BOTTLENECK_METHODS:
        from unitune.methods import bottleneck

        bottleneck.save(model, model.unitune_bottleneck, folder, cfg.method)
    else:  # PEFT adapters and full models alike
        model.save_pretrained(str(folder), safe_serialization=True)


def load(method: str, base_model: str, folder: Path, dtype, device, trust_remote_code: bool):
    """The trained model of a run folder (base + adapter, or the saved full weights); the
    base model is looked up only where an adapter needs it."""
    from unitune.models.loading import load_base, resolve_model_path

    if method in WEIGHT_METHODS:
        return load_base(str(folder), dtype, device, trust_remote_code)
    base = load_base(resolve_model_path(base_model), dtype, device, trust_remote_code)
    if method in BOTTLENECK_METHODS:
        from unitune.methods import bottleneck

        return bottleneck.load(base, folder)
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder))
