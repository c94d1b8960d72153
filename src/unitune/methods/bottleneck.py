"""Bottleneck adapters (Houlsby / Pfeiffer sequential, and parallel), which PEFT does not have.

Following PEFT's conventions: a config (``BottleneckConfig``, saved as ``adapter_config.json``
with ``"unitune_method"``), a layer (``BottleneckAdapter``: down-projection, non-linearity,
up-projection initialised to zero so a fresh adapter is the identity), the wrappers that put
it around a model's modules, and save/load of the adapter weights alone to
``adapter_model.safetensors``.

- sequential (``adapter_seq``): ``y = f(x); y + s * up(act(down(y)))`` after each target
  module: Houlsby places one after the attention output projection and one after the MLP,
  Pfeiffer only after the MLP.
- parallel (``adapter_par``): ``y = f(x) + s * up(act(down(x)))`` beside each target MLP block.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from unitune.errors import UserError
from unitune.methods.base import CONFIG_FILE, WEIGHTS_FILE, Method, register, unfreeze
from unitune.models.families import require_family
from unitune.sections import Section

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AdapterSection(Section):
    """Bottleneck adapters (adapter_seq, adapter_par)."""

    bottleneck_size: int = Field(64, gt=0)
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="adapter_seq: after attention and MLP (houlsby) or MLP only")
    scaling: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    target_modules: list[str] | Literal["auto"] = "auto"


@dataclass
class BottleneckConfig:
    kind: str  # "sequential" | "parallel"
    target_modules: list[str]  # module-name suffixes the adapters wrap
    bottleneck_size: int = 64
    scaling: float = 1.0
    dropout: float = 0.0
    non_linearity: str = "relu"
    placement: str = "pfeiffer"  # sequential only: houlsby | pfeiffer (recorded for reference)
    base_model_name_or_path: str = ""

    def save(self, folder: Path, method: str) -> None:
        data = {"unitune_method": method, **asdict(self)}
        (folder / CONFIG_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BottleneckConfig:
        data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}  # (older files also carry "unitune_method", "extra")
        return cls(**{k: v for k, v in data.items() if k in known})


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, size: int, non_linearity: str, dropout: float,
                 scaling: float):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[non_linearity]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden)
        self.scaling = scaling
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = self.down.weight.dtype
        return (self.up(self.dropout(self.act(self.down(h.to(dtype))))) * self.scaling).to(h.dtype)


class SequentialAdapter(nn.Module):
    """``base`` followed by an adapter on its output (residual)."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.base(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.adapter(out[0]), *out[1:])
        return out + self.adapter(out)


class ParallelAdapter(SequentialAdapter):
    """``base`` with an adapter beside it, reading the same input."""

    def forward(self, x, *args, **kwargs):
        return self.base(x, *args, **kwargs) + self.adapter(x)


def _hidden_size(module: nn.Module, kind: str) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if kind == "sequential" else module.in_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"bottleneck adapter: cannot tell the width of {type(module).__name__}")
    return linears[-1].out_features if kind == "sequential" else linears[0].in_features


def inject(model: nn.Module, cfg: BottleneckConfig) -> int:
    """Wrap every module whose name ends with a target; freeze the rest. Returns how many."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, _ in model.named_modules()
             if any(n == t or n.endswith("." + t) for t in cfg.target_modules)]
    if not names:
        raise UserError(f"adapter.target_modules {cfg.target_modules} match no module of this "
                        "model; give module names that exist (e.g. down_proj, mlp)")
    wrapper = SequentialAdapter if cfg.kind == "sequential" else ParallelAdapter
    device = next(model.parameters()).device
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        adapter = BottleneckAdapter(_hidden_size(module, cfg.kind), cfg.bottleneck_size,
                                    cfg.non_linearity, cfg.dropout, cfg.scaling)
        adapter.to(device=device, dtype=torch.float32)  # trained in fp32 whatever the base
        setattr(parent, child, wrapper(module, adapter))
    return len(names)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if ".adapter." in k}


class Bottleneck(Method):
    """``adapter_seq`` and ``adapter_par``: our adapters, saved as PEFT-style files."""

    sections = (("adapter", AdapterSection),)
    composable = "bottleneck"
    shares_init = True
    native_checkpoints = False  # the HF Trainer knows only PEFT adapters and whole models
    shardable = False  # its own save and load see whole tensors, not FSDP's / ZeRO's shards
    unfoldable_because = "a non-linearity sits between its projections"

    def __init__(self, name: str, kind: str, summary: str):
        self.name, self.kind, self.summary = name, kind, summary

    def build(self, model, cfg, model_type):
        ad = cfg.adapter
        if ad.target_modules != "auto":
            targets = ad.target_modules
        else:
            family = require_family(model_type, "adapter placement")
            if self.kind == "parallel":
                targets = [family.mlp_block]
            else:
                targets = [family.attention[-1], family.mlp[-1]] \
                    if ad.placement == "houlsby" else [family.mlp[-1]]
        bcfg = BottleneckConfig(
            kind=self.kind, target_modules=list(targets), bottleneck_size=ad.bottleneck_size,
            scaling=ad.scaling, dropout=ad.dropout, non_linearity=ad.non_linearity,
            placement=ad.placement, base_model_name_or_path=model.name_or_path)
        inject(model, bcfg)
        unfreeze(model, cfg.modules_to_save)
        model.unitune_bottleneck = bcfg
        return model, []

    def adapter_weights(self, model):
        return {k: v.clone() for k, v in adapter_state(model).items()}

    def set_adapter_weights(self, model, state):
        model.load_state_dict(state, strict=False)

    def save(self, model, folder, state_dict=None):
        """The adapters and every other trained weight (``modules_to_save``)."""
        from safetensors.torch import save_file

        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        source = state_dict if state_dict is not None else model.state_dict()
        state = {k: v.detach().cpu().contiguous() for k, v in source.items()
                 if ".adapter." in k or k in trained}
        if not any(".adapter." in k for k in state):
            raise RuntimeError("no bottleneck adapter weights to save")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(folder / WEIGHTS_FILE))
        model.unitune_bottleneck.save(folder, self.name)

    def load(self, base, folder):
        inject(base, BottleneckConfig.load(folder))
        self.load_weights(base, folder)
        return base

    def load_weights(self, model, folder):
        from safetensors.torch import load_file

        state = load_file(str(folder / WEIGHTS_FILE), device=str(next(model.parameters()).device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if ".adapter." in k]
        if missing or unexpected:
            raise UserError(f"{folder / WEIGHTS_FILE}: does not fit this model (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]})")


register(Bottleneck("adapter_seq", "sequential",
                    "bottleneck adapters after attention and/or MLP (Houlsby / Pfeiffer)"))
register(Bottleneck("adapter_par", "parallel", "bottleneck adapters beside the MLP"))
