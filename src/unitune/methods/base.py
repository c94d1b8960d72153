"""What a fine-tuning method is, and the registry that holds every one.

A ``Method`` brings its name, the config sections it reads, the checks that refuse it where it
cannot work (run before any weights load), how it turns a base model into the trainable model
(and the Trainer callbacks it needs), its adapter weights (module arithmetic, shared
initialisations), how it saves into a folder and loads back, and what later commands may do
with it (merge into the base, compose with arithmetic). The modules of ``methods/`` register
their methods here; no other module lists method names or switches on them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unitune.errors import UserError, did_you_mean
from unitune.sections import Section, declared_sections

# the files of a saved adapter: PEFT's names, used by every method so that module arithmetic
# reads them all
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
INIT_FILE = "adapter_init.safetensors"  # the adapter before training, for shared inits


class Method:
    """A fine-tuning method. Subclasses set the attributes and implement ``build`` (and, for
    adapters, the weight accessors and ``load``)."""

    name: str = ""
    summary: str = ""
    sections: tuple[tuple[str, type[Section]], ...] = ()  # (config key, schema) it reads
    quantized_base: str | None = None  # the base this method always trains on ('4bit')
    takes_quantized_base: bool = False  # may train on a load_in=8bit/4bit base
    packing_ok: bool = True
    composable: str | None = None  # module-arithmetic family: lora, ia3, bottleneck, full
    mergeable: bool = False  # its update folds into the base weights (unitune merge)
    unfoldable_because: str = "its update is not a change of the base weights"
    whole_model: bool = False  # trains and saves every weight: the run folder is a HF model
    shares_init: bool = False  # has adapter weights a later run can start from (init_adapter)
    shardable: bool = True  # trains under FSDP / DeepSpeed (which shard weights and gradients)
    starts_at_base: bool = False  # a new adapter changes nothing yet (LoRA's zero B, IA3's ones)
    peft: bool = False  # a PEFT adapter (PEFT saves, loads and can disable it)

    def check_foldable(self, where: str, instead: str) -> None:
        """Refuse, in one line naming ``where`` and what to do ``instead``, to fold this
        method's update into the base weights when it cannot be (merging, GGUF export, a new
        run that starts from this one)."""
        if not (self.whole_model or self.mergeable):
            raise UserError(f"{where}: method={self.name} cannot be folded into its base "
                            f"weights ({self.unfoldable_because}); {instead}")

    def base_quantization(self, cfg) -> str | None:
        """'4bit', '8bit' or None: what the base is loaded in for this config."""
        return self.quantized_base or (None if cfg.load_in == "none" else cfg.load_in)

    def check(self, cfg, model_type: str | None, device: torch.device) -> None:
        """Refuse a configuration that cannot work here, before any weights are loaded."""
        quant = self.base_quantization(cfg)
        if quant and device.type != "cuda":
            what = f"{self.name} (a {quant} base)" if self.quantized_base else \
                f"{quant} loading"
            raise UserError(f"{what} needs a CUDA GPU with bitsandbytes; on this CPU use "
                            "method=lora (same adapter, unquantized base)")
        if quant and not (self.quantized_base or self.takes_quantized_base):
            raise UserError(f"method={self.name} cannot train on a {quant} base; use "
                            "lora/qlora")
        if cfg.packing and not self.packing_ok:
            raise UserError(f"method={self.name} prepends virtual tokens, which packing cannot "
                            "take; set packing=false")
        if cfg.init_adapter and not self.shares_init:
            raise UserError(f"init_adapter does not apply to method={self.name}")

    def build(self, model, cfg, model_type: str | None) -> tuple[torch.nn.Module, list]:
        """The trainable model and the ``TrainerCallback``s the method needs."""
        raise NotImplementedError

    def adapter_weights(self, model) -> dict[str, torch.Tensor]:
        """The adapter's own weights, as saved in ``adapter_model.safetensors`` (CPU copies)."""
        raise UserError(f"method={self.name} has no separate adapter weights")

    def set_adapter_weights(self, model, state: dict[str, torch.Tensor]) -> None:
        """Replace the adapter's weights in place (keys as in ``adapter_weights``)."""
        raise UserError(f"method={self.name} has no separate adapter weights")

    def load(self, base, folder: Path):
        """The trained model of ``folder``, built on ``base`` (a freshly loaded base model).
        Not called for ``whole_model`` methods: their folder is loaded as a model itself."""
        raise NotImplementedError

    # Saving: the HF Trainer saves and restores PEFT adapters and whole models itself (in runs
    # and checkpoints); a method it does not know (bottleneck adapters) sets
    # ``native_checkpoints = False`` and writes and reads its weights with these two.
    native_checkpoints: bool = True

    def save(self, model, folder: Path, state_dict: dict | None = None) -> None:
        """Write the trained weights (and their config) into ``folder``; ``state_dict``: the
        gathered weights when a distributed strategy shards them."""
        raise NotImplementedError

    def load_weights(self, model, folder: Path) -> None:
        """Put the weights that ``save`` wrote to ``folder`` into ``model`` (a resume)."""
        raise NotImplementedError

    # Training state beyond the weights (AdaLoRA's rank allocator): written into each
    # checkpoint after the Trainer's files, and restored on resume.
    def save_training_state(self, model, folder: Path) -> None:
        """Write what a resume needs besides the Trainer's checkpoint (nothing by default)."""

    def load_training_state(self, model, folder: Path) -> bool:
        """Restore what ``save_training_state`` wrote; True when that restored the weights
        too (the checkpoint's own weights are then not loaded)."""
        return False


def unfreeze(model, names: list[str]) -> None:
    """Make the named modules (a full name or a name suffix) trainable."""
    for name in names:
        matched = [mod for n, mod in model.named_modules() if n == name or n.endswith("." + name)]
        if not matched:
            raise UserError(f"module '{name}' (modules_to_save / freeze.modules) matches no "
                            "module of this model")
        for mod in matched:
            for p in mod.parameters():
                p.requires_grad_(True)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method '{method.name}' is registered twice")
    _REGISTRY[method.name] = method
    return method


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Method:
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, _REGISTRY)}; methods: "
                        f"{', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def all_methods() -> list[Method]:
    return list(_REGISTRY.values())


def config_sections() -> dict[str, type[Section]]:
    """Every config section the registered methods read, by key."""
    return declared_sections(_REGISTRY.values())
