"""The methods PEFT implements: LoRA and its rsLoRA / DoRA / QLoRA variants, AdaLoRA, prefix
tuning, P-tuning, prompt tuning and (IA)3, each with its config section.

PEFT builds, saves and loads them (``peft.get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained``), so their run folders are standard PEFT adapters. What we add:
default target modules per model family (all attention and MLP projections for LoRA; PEFT's
own defaults for (IA)3 and for families we do not know), AdaLoRA's rank allocator called after
every optimizer step with the Trainer's own step count, and QLoRA's base preparation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field

from unitune.errors import UserError
from unitune.methods.base import Method, register
from unitune.models.families import family_of, require_family
from unitune.sections import Section, Targets


class LoraSection(Section):
    """LoRA hyper-parameters (lora, rslora, dora, qlora, adalora; ``peft.LoraConfig``)."""

    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Targets = Field(
        "auto", description="module names, 'all-linear', or 'auto' (the model family's "
        "attention + MLP projections; PEFT's defaults for other families)")


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
    target_modules: Targets = Field("auto", description="'auto': PEFT's defaults per family")
    feedforward_modules: list[str] = Field(default_factory=list)


class PeftMethod(Method):
    """A method PEFT implements: build a ``peft`` config, wrap the model, PEFT's file format."""

    peft = True

    def peft_config(self, model, cfg, model_type: str | None, task_type: str):
        raise NotImplementedError

    def build(self, model, cfg, model_type):
        import peft

        from unitune.models.loading import is_scorer

        task = "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else \
            "SEQ_CLS" if is_scorer(model) else "CAUSAL_LM"  # (SEQ_CLS: PEFT trains and saves
        config = self.peft_config(model, cfg, model_type, task)  # the new scoring head fully)
        if self.base_quantization(cfg):
            model = prepare_quantized(model)
        try:
            model = peft.get_peft_model(model, config)
        except ValueError as exc:
            raise UserError(f"method={self.name}: {str(exc).splitlines()[0]} (check the target "
                            "modules against the model's module names)") from None
        return model, self.callbacks(cfg)

    def callbacks(self, cfg) -> list:
        return []

    def adapter_weights(self, model):
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone().contiguous()
                for k, v in get_peft_model_state_dict(model).items()}

    def set_adapter_weights(self, model, state):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)

    def load(self, base, folder: Path):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder))


def prepare_quantized(model):
    """A k-bit base made ready for an adapter. PEFT's k-bit preparation upcasts every
    unquantized weight (embeddings, norms, LM head) to fp32, which fp16 training needs; a bf16
    base keeps them in bf16 (2 GiB less for an 8B model), as its matmuls run in bf16 under
    autocast either way. Checkpointing is set up before (train/checkpointing.py)."""
    import peft

    if model.dtype == torch.bfloat16:
        return model
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def lora_targets(value, model_type: str | None) -> list[str] | str | None:
    """LoRA target modules: 'auto' is the family's attention + MLP projections, or PEFT's
    default for a family unitune does not know (None lets PEFT choose)."""
    if value != "auto":
        return value
    family = family_of(model_type)
    return list(family.linear) if family else None


class Lora(PeftMethod):
    sections = (("lora", LoraSection),)
    takes_quantized_base = True
    mergeable = True
    shares_init = True
    starts_at_base = True

    def __init__(self, name: str, summary: str, rslora: bool = False, dora: bool = False,
                 quantized: bool = False):
        self.name, self.summary = name, summary
        self.rslora, self.dora = rslora, dora
        self.quantized_base = "4bit" if quantized else None
        # DoRA's magnitude vector is not linear: it composes by the exact (dense) rule only
        self.composable = "lora"

    def lora_kwargs(self, cfg, model_type, task_type) -> dict:
        lo = cfg.lora
        return dict(task_type=task_type, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                    target_modules=lora_targets(lo.target_modules, model_type),
                    modules_to_save=cfg.modules_to_save or None)

    def peft_config(self, model, cfg, model_type, task_type):
        import peft

        return peft.LoraConfig(r=cfg.lora.r, use_rslora=self.rslora, use_dora=self.dora,
                               **self.lora_kwargs(cfg, model_type, task_type))


class AdaLora(Lora):
    sections = (("lora", LoraSection), ("adalora", AdaLoraSection))

    def __init__(self):
        super().__init__("adalora", "LoRA with ranks reallocated by importance (AdaLoRA)")
        self.shardable = False  # its allocator reads whole gradients

    def check(self, cfg, model_type, device):
        super().check(cfg, model_type, device)
        ad = cfg.adalora
        if ad.target_r > ad.init_r:
            raise UserError(f"adalora.target_r ({ad.target_r}) must be <= adalora.init_r "
                            f"({ad.init_r})")

    def peft_config(self, model, cfg, model_type, task_type):
        import peft

        ad = cfg.adalora
        # total_step, tinit and tfinal are set from the Trainer's step count when training
        # begins (AdaLoraSchedule); PEFT needs placeholders that pass its checks until then
        return peft.AdaLoraConfig(
            init_r=ad.init_r, target_r=ad.target_r, total_step=2, tinit=0, tfinal=0,
            deltaT=ad.delta_t, beta1=ad.beta1, beta2=ad.beta2, orth_reg_weight=ad.orth_reg_weight,
            **self.lora_kwargs(cfg, model_type, task_type))

    def callbacks(self, cfg) -> list:
        return [_adalora_callback(cfg.adalora)]

    STATE_FILE = "adalora_state.safetensors"
    _ALLOCATOR = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def save_training_state(self, model, folder: Path) -> None:
        """The allocator's importance estimates, the rank pattern so far and every trained
        weight, the adapter untrimmed (PEFT's save drops the pruned ranks, which may still
        come back before the final pattern, and a model of the initial ranks cannot load it)
        and ``modules_to_save`` (a reward model's head) too."""
        from safetensors.torch import save_file

        model = _peft_model(model)
        allocator = model.base_model.rankallocator
        tensors = {f"weights/{n}": p.detach().cpu().contiguous()
                   for n, p in model.named_parameters() if p.requires_grad}
        for kind in self._ALLOCATOR:
            tensors.update({f"{kind}/{n}": t.detach().cpu().contiguous()
                            for n, t in getattr(allocator, kind).items()})
        config = next(iter(model.peft_config.values()))
        save_file(tensors, str(folder / self.STATE_FILE),
                  metadata={"rank_pattern": json.dumps(config.rank_pattern)})

    def load_training_state(self, model, folder: Path) -> bool:
        from safetensors import safe_open

        path = folder / self.STATE_FILE
        if not path.is_file():
            return False
        model = _peft_model(model)
        parameters = dict(model.named_parameters())
        inner = dict(model.base_model.model.named_parameters())  # (the allocator's names)
        allocator = model.base_model.rankallocator
        state: dict[str, dict] = {kind: {} for kind in self._ALLOCATOR}
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                kind, name = key.split("/", 1)
                if kind == "weights":
                    with torch.no_grad():
                        parameters[name].copy_(f.get_tensor(key))
                else:
                    state[kind][name] = f.get_tensor(key).to(inner[name].device)
            pattern = json.loads(f.metadata()["rank_pattern"])
        for kind, values in state.items():
            setattr(allocator, kind, values)
        next(iter(model.peft_config.values())).rank_pattern = pattern
        return True


def _steps(value: float, total: int) -> int:
    return int(value) if value >= 1 else max(1, int(value * total))


def _peft_model(model):
    while not hasattr(model, "peft_config"):  # unwrap DDP / accelerate wrappers
        model = model.module
    return model


def _adalora_callback(schedule: AdaLoraSection):
    from transformers import TrainerCallback

    class AdaLoraAllocator(TrainerCallback):
        """Gives AdaLoRA the Trainer's step count when training begins, then calls its rank
        allocator after every optimizer step, before gradients are zeroed (what trainers
        commonly forget: without it AdaLoRA is plain LoRA with a larger rank)."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            config = next(iter(_peft_model(model).peft_config.values()))
            total = state.max_steps
            tinit, tfinal = _steps(schedule.tinit, total), _steps(schedule.tfinal, total)
            if tinit >= total - tfinal:
                raise UserError(f"adalora: tinit ({tinit} steps) + tfinal ({tfinal} steps) "
                                f"leave no steps to prune ranks in a {total}-step run; lower "
                                "them or train longer")
            config.total_step, config.tinit, config.tfinal = total, tinit, tfinal

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            _peft_model(model).base_model.update_and_allocate(state.global_step)

    return AdaLoraAllocator()


class PromptMethod(PeftMethod):
    sections = (("prompt", PromptSection),)
    packing_ok = False
    unfoldable_because = "it adds virtual tokens, not weight updates"

    def __init__(self, name: str, summary: str):
        self.name, self.summary = name, summary

    def check(self, cfg, model_type, device):
        super().check(cfg, model_type, device)
        if self.name == "prefix" and not require_family(model_type,
                                                        "prefix tuning support").prefix_ok:
            raise UserError(f"prefix tuning does not apply to '{model_type}' (its attention "
                            "takes no past key/values); use method=p_tuning or lora")

    def peft_config(self, model, cfg, model_type, task_type):
        import peft

        n = cfg.prompt.num_virtual_tokens
        if self.name == "prefix":
            return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n)
        if self.name == "p_tuning":
            return peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=n,
                                            encoder_hidden_size=cfg.prompt.encoder_hidden_size)
        init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": cfg.prompt.init_text,
                "tokenizer_name_or_path": model.name_or_path} if cfg.prompt.init_text else {}
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=n, **init)


class IA3(PeftMethod):
    name = "ia3"
    summary = "learned rescaling vectors ((IA)3)"
    sections = (("ia3", IA3Section),)
    takes_quantized_base = True
    composable = "ia3"
    starts_at_base = True
    mergeable = True
    shares_init = True

    def peft_config(self, model, cfg, model_type, task_type):
        import peft
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

        targets, ff = cfg.ia3.target_modules, cfg.ia3.feedforward_modules
        if targets == "auto":
            targets = ff = None  # PEFT's defaults for the family
            if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
                family = require_family(model_type, "IA3 target modules")
                att = [m for m in family.attention if m in ("k_proj", "v_proj")] or \
                    [family.attention[0]]
                targets, ff = [*att, family.mlp[-1]], [family.mlp[-1]]
        return peft.IA3Config(task_type=task_type, target_modules=targets,
                              feedforward_modules=ff, modules_to_save=cfg.modules_to_save or None)


for _method in (
    Lora("lora", "low-rank updates (LoRA)"),
    Lora("rslora", "LoRA with rank-stabilised scaling alpha / sqrt(r)", rslora=True),
    Lora("dora", "weight-decomposed LoRA (DoRA)", dora=True),
    Lora("qlora", "LoRA on a 4-bit NF4 base (CUDA + bitsandbytes)", quantized=True),
    AdaLora(),
    PromptMethod("prefix", "trained key/value prefixes in every layer (prefix tuning)"),
    PromptMethod("p_tuning", "virtual tokens from a prompt encoder (P-tuning)"),
    PromptMethod("prompt", "trained virtual token embeddings (prompt tuning)"),
    IA3(),
):
    register(_method)
