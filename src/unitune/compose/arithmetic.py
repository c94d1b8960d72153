"""Module arithmetic over trained runs (Zhang et al., NeurIPS 2023), in weight space.

Owns combining the saved weights of several runs with coefficients ``c_i`` into one run.
Every rule makes the result's update linear in each coefficient (a negative coefficient is
the paper's negation operator scaled by ``|c|``), honours each input's own scaling, and writes
a config that describes the weights exactly. ``combine`` picks the rule:

``paper`` (default), per parameter, keeping the rank:
- LoRA: ``A = Σ (|c_i| / Σ|c_j|) A_i``, ``B = Σ c_i (s_i / s_out) B_i`` with ``s`` each input's
  per-module scale (alpha / r, or alpha / √r for rsLoRA, rank and alpha patterns included)
  and ``s_out`` the first input's. For convex weights this is the paper's addition; for one
  module, ``-c*x`` is exactly ``-c·ΔW`` (the official code's scaled negation ``{-λA, B}``
  up to where the sign sits). Across modules it is exact when they share A (one
  initialisation), an approximation otherwise (``exact`` is not).
- (IA)3: ``l = 1 + Σ c_i (l_i - 1)``, exact: the update is linear in ``l - 1``.
- Bottleneck adapters: down-projections like A, up-projections (weight and bias) like B:
  exact for one module (``c*x`` scales its output by ``c``), an approximation for sums of
  different adapters (the non-linearity sits between); ``exact`` concatenates them.
- ``full`` / ``freeze`` runs: task arithmetic, ``θ = θ_base + Σ c_i (θ_i - θ_base)``.

``exact``: the sum of the updates itself. LoRA: ``ΔW = Σ c_i s_i B_i A_i`` as one LoRA of
rank Σ r_i by concatenation (PEFT's ``cat``), or SVD-truncated to ``rank`` (PEFT's ``svd``);
DoRA and AdaLoRA through their dense updates (PEFT merges each module, the difference from
the base is summed) and an SVD, exact at full rank. Bottleneck adapters: one adapter of
bottleneck Σ b_i (``Σ c_i up_i(act(down_i x))`` is exactly that). (IA)3 and full runs: as
``paper``.

``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (with ``density``): PEFT's own:
``add_weighted_adapter`` for LoRA (its ``*_svd`` variants when a ``rank`` is given), and
``peft.utils.merge_utils`` on the task vectors ``l - 1`` of (IA)3 and ``θ - θ_base`` of full
runs.

Weights outside the adapter (``modules_to_save``: embeddings, LM head) are combined as task
vectors against the base under every rule. Inputs are checked before anything is combined:
same base model, same method family, same target modules, same shapes where the rule needs
them; ``paper`` warns when LoRA or bottleneck inputs started from different initialisations.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unitune import methods
from unitune.compose import COMBINES, PRUNING
from unitune.errors import UserError, did_you_mean
from unitune.methods import CONFIG_FILE, INIT_FILE, WEIGHTS_FILE
from unitune.run import RunRecord, open_base, read_finished, staged, write_run

PEFT_PREFIX = "base_model.model."


@dataclass
class Module:
    """One input run: its record, method, adapter config and weights (``extra``: weights that
    are not adapter weights, such as ``modules_to_save`` copies, keyed as saved)."""

    folder: Path
    info: RunRecord
    family: str
    config: dict
    weights: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def dense_only(self) -> bool:
        """DoRA and AdaLoRA: composable through their dense updates only."""
        return self.config.get("use_dora", False) or self.config.get("peft_type") == "ADALORA"


def _family(method: str) -> str:
    family = methods.get(method).composable
    if family is None:
        composable = [m.name for m in methods.all_methods() if m.composable]
        raise UserError(f"method '{method}' cannot be composed; module arithmetic works on "
                        f"{', '.join(composable)}")
    return family


def _adapter_key(key: str, family: str) -> bool:
    if family == "lora":
        return ".lora_" in key
    if family == "ia3":
        return ".ia3_l" in key
    return ".adapter." in key


def _load_weights(folder: Path, family: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if family != "full":
        if not (folder / WEIGHTS_FILE).exists():
            raise UserError(f"{folder}: no {WEIGHTS_FILE}; the run is incomplete")
        return load_file(str(folder / WEIGHTS_FILE))
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name != INIT_FILE:
            state.update(load_file(str(path)))
    if not state:
        raise UserError(f"{folder}: no *.safetensors model weights")
    return state


def load_inputs(folders: list[Path], combine: str = "paper") -> list[Module]:
    """Every input's record, config and weights, checked to be composable with ``combine``."""
    inputs = []
    for folder in folders:
        info = read_finished(folder)
        if info.kind == "rm":
            raise UserError(f"{folder}: a reward model (stage=rm); module arithmetic combines "
                            "language-model adapters")
        family = _family(info.method)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")) \
            if family != "full" else {}
        weights = _load_weights(folder, family)
        module = Module(folder, info, family, config, weights)
        if family != "full":
            module.extra = {k: v for k, v in weights.items() if not _adapter_key(k, family)}
            module.weights = {k: v for k, v in weights.items() if _adapter_key(k, family)}
        inputs.append(module)
    first = inputs[0]
    for other in inputs[1:]:
        where = f"{other.folder} vs {first.folder}"
        if other.info.base_model != first.info.base_model:
            raise UserError(f"{where}: different base models ({other.info.base_model} vs "
                            f"{first.info.base_model}); adapters of different bases cannot be "
                            "combined")
        if other.family != first.family:
            raise UserError(f"{where}: different methods ({other.info.method} vs "
                            f"{first.info.method}); compose runs of one method family")
        if _modules(other) != _modules(first):
            raise UserError(f"{where}: different target modules; compose adapters trained on "
                            "the same modules")
        if set(other.extra) != set(first.extra):
            raise UserError(f"{where}: different modules_to_save "
                            f"({sorted(other.extra)[:3]} vs {sorted(first.extra)[:3]})")
        if first.family == "bottleneck":
            for key in ("kind", "non_linearity", "target_modules"):
                if other.config.get(key) != first.config.get(key):
                    raise UserError(f"{where}: different bottleneck adapters ({key} "
                                    f"{other.config.get(key)!r} vs {first.config.get(key)!r})")
    _check_combine(inputs, combine)
    return inputs


def _modules(inp: Module) -> set[str]:
    """The names of the modules an input adapts (or every weight, for a full run)."""
    if inp.family == "lora":
        return {k.split(".lora_")[0] for k in inp.weights}
    return set(inp.weights)


def _check_combine(inputs: list[Module], combine: str) -> None:
    if combine not in COMBINES:
        raise UserError(f"--combine {combine!r} is not a combination rule"
                        f"{did_you_mean(combine, COMBINES)}; rules: {', '.join(COMBINES)}")
    first = inputs[0]
    dense = [i.folder.name for i in inputs if i.dense_only]
    if dense and combine != "exact":
        raise UserError(f"{', '.join(dense)}: DoRA and AdaLoRA updates are not linear in their "
                        "weights; compose them with --combine exact (their dense updates, "
                        "summed and factorised by SVD)")
    if first.family == "bottleneck" and combine in PRUNING:
        raise UserError(f"--combine {combine} does not apply to bottleneck adapters (a "
                        "non-linear module); use paper or exact")
    if combine == "paper" and first.family in ("lora", "bottleneck"):
        for key in first.weights:
            shapes = {tuple(i.weights[key].shape) for i in inputs}
            if len(shapes) > 1:
                raise UserError(f"weight '{key}' has different shapes {sorted(shapes)} "
                                "(different ranks or bottleneck sizes?); use --combine exact")


def lora_scale(config: dict, module: str) -> float:
    """PEFT's scale of one LoRA module: alpha / r, or alpha / √r for rsLoRA, with the rank
    and alpha patterns applied (``module``: its name in the model, e.g.
    ``model.layers.0.self_attn.q_proj``)."""
    from peft.utils.other import get_pattern_key

    r, alpha = config["r"], config["lora_alpha"]
    if config.get("rank_pattern"):
        r = config["rank_pattern"].get(get_pattern_key(list(config["rank_pattern"]), module), r)
    if config.get("alpha_pattern"):
        alpha = config["alpha_pattern"].get(
            get_pattern_key(list(config["alpha_pattern"]), module), alpha)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _lora_parts(key: str) -> tuple[str, str]:
    """('model.layers.0.self_attn.q_proj', 'a' | 'b') for a saved LoRA weight name."""
    module, _, rest = key.partition(".lora_")
    module = module.removeprefix(PEFT_PREFIX)
    return module, ("a" if rest.startswith(("A", "embedding_A")) else "b")


def _mix_weights(coefs: list[float]) -> list[float]:
    """|c_i| / Σ|c_j|: the convex weights of the rank-side factors (A, down-projections)."""
    total = sum(abs(c) for c in coefs)
    return [abs(c) / total for c in coefs] if total else [1 / len(coefs)] * len(coefs)


def _weighted(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return sum(w * t.float() for w, t in zip(weights, tensors, strict=True))


class Combiner:
    """Combines a fixed list of input runs under one rule, for any coefficients (a sweep
    calls ``weights`` once per λ). ``config`` and ``method`` describe every result."""

    def __init__(self, folders: list[Path], combine: str = "paper", rank: int | None = None,
                 density: float | None = None, majority_sign: str = "total", seed: int = 0,
                 trust_remote_code: bool = False, log=print):
        if rank is not None and rank <= 0:
            raise UserError(f"--rank must be > 0, got {rank}")
        if combine in PRUNING:
            if density is None or not 0 < density <= 1:
                raise UserError(f"--combine {combine} needs --density in (0, 1] (the share of "
                                "each task vector kept), e.g. --density 0.5")
        elif density is not None:
            raise UserError(f"--density applies to --combine {', '.join(PRUNING)} only")
        self.inputs = load_inputs(folders, combine)
        self.combine, self.rank, self.density = combine, rank, density
        self.majority_sign, self.seed = majority_sign, seed
        self.trust_remote_code, self.log = trust_remote_code, log
        first = self.inputs[0]
        if rank is not None and not (first.family == "lora" and combine != "paper"):
            raise UserError("--rank applies to LoRA runs under --combine exact (SVD of the "
                            "summed update) or a pruning rule (PEFT's *_svd variants)")
        self.method = first.info.method
        self.config = dict(first.config)
        self._base_model = None
        self._base_state: dict[str, torch.Tensor] = {}
        self._dense: list[dict[str, torch.Tensor]] | None = None
        self._peft_model = None
        if first.family == "lora" and combine == "exact":
            self.method = "qlora" if first.info.method == "qlora" else "lora"
        if first.family == "bottleneck" and combine == "exact":
            self.config["bottleneck_size"] = sum(i.config["bottleneck_size"]
                                                 for i in self.inputs)

    # --- the base model, for task vectors and for PEFT's routes ---------------------------

    def _base(self):
        if self._base_model is None:
            first = self.inputs[0]
            self._base_model = open_base(first.folder, first.info, torch.float32,
                                         torch.device("cpu"), None, self.trust_remote_code,
                                         self.log, progress=False).eval()
            state = self._base_model.state_dict()
            keys = set(first.weights) if first.family == "full" else \
                {k.removeprefix(PEFT_PREFIX) for k in first.extra}
            missing = sorted(keys - set(state))
            if missing:
                raise UserError(f"{first.folder}: weights {missing[:3]} are not in the base "
                                f"model {first.info.base_model}")
            self._base_state = {k: state[k].detach().clone().float() for k in keys}
        return self._base_model

    def _task_vectors(self, get, keys, coefs: list[float]) -> dict[str, torch.Tensor]:
        """``base + rule(θ_i - base)`` for weights outside the adapter (and full runs)."""
        self._base()
        out = {}
        for key in keys:
            base = self._base_state[key.removeprefix(PEFT_PREFIX)]
            deltas = [get(i)[key].float() - base for i in self.inputs]
            ref = get(self.inputs[0])[key]
            out[key] = (base + self._pruned_sum(deltas, coefs)).to(ref.dtype).contiguous()
        return out

    def _pruned_sum(self, tensors: list[torch.Tensor], coefs: list[float]) -> torch.Tensor:
        """Σ c_i t_i, or PEFT's TIES / DARE / magnitude pruning of the task tensors."""
        from peft.utils import merge_utils

        weights = torch.tensor(coefs, dtype=torch.float32)
        if self.combine in ("paper", "exact"):
            return merge_utils.task_arithmetic(tensors, weights)
        if self.combine.startswith("dare"):
            torch.manual_seed(self.seed)
        fn = getattr(merge_utils, self.combine)
        if self.combine in ("ties", "dare_ties"):
            return fn(tensors, weights, self.density, self.majority_sign)
        return fn(tensors, weights, self.density)

    # --- the rules --------------------------------------------------------------------------

    def weights(self, coefs: list[float]) -> dict[str, torch.Tensor]:
        """The combined weights for coefficients ``coefs`` (one per input)."""
        family = self.inputs[0].family
        if family == "full":
            return self._task_vectors(lambda i: i.weights, self.inputs[0].weights, coefs)
        if family == "lora" and self.combine in PRUNING:
            out = self._peft_weighted(coefs)
        elif family == "lora" and self.combine == "exact":
            out = self._lora_dense(coefs) if any(i.dense_only for i in self.inputs) \
                else self._lora_concat(coefs)
        elif family == "lora":
            out = self._lora_paper(coefs)
        elif family == "ia3":
            out = self._ia3(coefs)
        elif self.combine == "exact":
            out = self._bottleneck_concat(coefs)
        else:
            out = self._bottleneck_paper(coefs)
        if self.inputs[0].extra:
            out.update(self._task_vectors(lambda i: i.extra, self.inputs[0].extra, coefs))
        return out

    def _lora_paper(self, coefs):
        mix = _mix_weights(coefs)
        out = {}
        for key, ref in self.inputs[0].weights.items():
            module, role = _lora_parts(key)
            tensors = [i.weights[key] for i in self.inputs]
            if role == "a":
                value = _weighted(tensors, mix)
            else:
                s_out = lora_scale(self.config, module)
                value = _weighted(tensors, [c * lora_scale(i.config, module) / s_out
                                            for c, i in zip(coefs, self.inputs, strict=True)])
            out[key] = value.to(ref.dtype).contiguous()
        return out

    def _ia3(self, coefs):
        out = {}
        for key, ref in self.inputs[0].weights.items():
            value = 1 + self._pruned_sum([i.weights[key].float() - 1 for i in self.inputs], coefs)
            out[key] = value.to(ref.dtype).contiguous()
        return out

    def _bottleneck_paper(self, coefs):
        mix = _mix_weights(coefs)
        s_out = self.config.get("scaling", 1.0)
        ups = [c * i.config.get("scaling", 1.0) / s_out
               for c, i in zip(coefs, self.inputs, strict=True)]
        out = {}
        for key, ref in self.inputs[0].weights.items():
            tensors = [i.weights[key] for i in self.inputs]
            value = _weighted(tensors, mix if ".adapter.down." in key else ups)
            out[key] = value.to(ref.dtype).contiguous()
        return out

    def _bottleneck_concat(self, coefs):
        """One adapter whose bottleneck holds every input's: down rows and up columns
        concatenated, up scaled by c_i s_i / s_out, up biases summed likewise."""
        s_out = self.config.get("scaling", 1.0)
        ups = [c * i.config.get("scaling", 1.0) / s_out
               for c, i in zip(coefs, self.inputs, strict=True)]
        out = {}
        for key, ref in self.inputs[0].weights.items():
            tensors = [i.weights[key].float() for i in self.inputs]
            if ".adapter.down." in key:
                value = torch.cat(tensors, 0)
            elif key.endswith("weight"):
                value = torch.cat([u * t for u, t in zip(ups, tensors, strict=True)], 1)
            else:
                value = _weighted(tensors, ups)
            out[key] = value.to(ref.dtype).contiguous()
        return out

    def _set_ranks(self, ranks: dict[str, int], keep_targets: bool = True) -> None:
        """The output config: plain LoRA at scale 1 with these per-module ranks."""
        import peft

        first = self.inputs[0].config
        common = max(set(ranks.values()), key=list(ranks.values()).count)
        pattern = {m: r for m, r in ranks.items() if r != common}
        targets = first.get("target_modules") if keep_targets else None
        config = peft.LoraConfig(
            r=common, lora_alpha=common, rank_pattern=pattern, alpha_pattern=dict(pattern),
            target_modules=targets or sorted({m.rsplit(".", 1)[-1] for m in ranks}),
            modules_to_save=first.get("modules_to_save"), task_type=first.get("task_type"),
            fan_in_fan_out=first.get("fan_in_fan_out", False),
            base_model_name_or_path=first.get("base_model_name_or_path"))
        self.config = {k: sorted(v) if isinstance(v, set) else v
                       for k, v in config.to_dict().items()}

    def _factor(self, delta: torch.Tensor, max_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of rank ``self.rank`` (else ``max_rank``) with B @ A closest to ``delta``."""
        u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(self.rank or max_rank, sv.shape[0])
        return vh[:k].contiguous(), (u[:, :k] * sv[:k]).contiguous()

    def _lora_concat(self, coefs):
        out, ranks = {}, {}
        for key in self.inputs[0].weights:
            module, role = _lora_parts(key)
            if role != "a":
                continue
            bkey = key.replace("lora_A", "lora_B").replace("lora_embedding_A",
                                                          "lora_embedding_B")
            a = torch.cat([i.weights[key].float() for i in self.inputs], 0)
            b = torch.cat([c * lora_scale(i.config, module) * i.weights[bkey].float()
                           for c, i in zip(coefs, self.inputs, strict=True)], 1)
            if self.rank is not None:
                a, b = self._factor(b @ a, a.shape[0])
            dtype = self.inputs[0].weights[key].dtype
            out[key], out[bkey] = a.to(dtype).contiguous(), b.to(dtype).contiguous()
            ranks[module] = a.shape[0]
        self._set_ranks(ranks)
        return out

    def _lora_dense(self, coefs):
        """DoRA / AdaLoRA (and any LoRA with them): Σ c_i ΔW_i, each ΔW_i what PEFT's merge
        adds to the base weight, factorised by SVD (exact at full rank)."""
        if self._dense is None:
            self._dense = [self._dense_update(i) for i in self.inputs]
        out, ranks = {}, {}
        for module in self._dense[0]:
            delta = sum(c * d[module] for c, d in zip(coefs, self._dense, strict=True))
            a, b = self._factor(delta, min(delta.shape))
            out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
            out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
            ranks[module] = a.shape[0]
        self._set_ranks(ranks, keep_targets=False)
        return out

    def _dense_update(self, inp: Module) -> dict[str, torch.Tensor]:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        model = PeftModel.from_pretrained(self._base(), str(inp.folder))
        deltas = {}
        for name, layer in model.base_model.model.named_modules():
            if not isinstance(layer, LoraLayer) or not layer.lora_A:
                continue
            if not isinstance(layer.get_base_layer(), torch.nn.Linear):
                raise UserError(f"{inp.folder}: module {name} is not a linear layer; --combine "
                                "exact composes DoRA/AdaLoRA on linear layers only")
            weight = layer.get_base_layer().weight
            before = weight.detach().clone()
            with torch.no_grad():
                layer.merge()
                deltas[name] = (weight.detach() - before).float()
                layer.unmerge()
                weight.copy_(before)
        self._base_model = model.unload()
        return deltas

    def _peft_weighted(self, coefs):
        """PEFT's ``add_weighted_adapter`` (TIES, DARE, magnitude pruning; ``*_svd`` with a
        rank) over every input loaded as a named adapter of one base."""
        from peft import get_peft_model_state_dict

        model = self._peft_inputs()
        kind = self.combine + ("_svd" if self.rank else "")
        if self.combine.startswith("dare"):
            torch.manual_seed(self.seed)
        names = [f"input{k}" for k in range(len(self.inputs))]
        try:
            model.add_weighted_adapter(names, list(coefs), "combined", combination_type=kind,
                                       svd_rank=self.rank, density=self.density,
                                       majority_sign_method=self.majority_sign)
        except ValueError as exc:  # e.g. different ranks, which TIES/DARE cannot take
            raise UserError(f"--combine {self.combine}: {str(exc).splitlines()[0]} (PEFT); "
                            "add --rank N to merge the dense updates instead") from None
        weights = get_peft_model_state_dict(model, adapter_name="combined")
        config = model.peft_config["combined"]
        model.delete_adapter("combined")
        # PEFT folds each input's scale into the weights and gives the result alpha = r,
        # which is scale 1 only without rsLoRA
        config.use_rslora = False
        config.modules_to_save = self.inputs[0].config.get("modules_to_save")
        self.config = {k: sorted(v) if isinstance(v, set) else v
                       for k, v in config.to_dict().items()}
        self.method = "qlora" if self.inputs[0].info.method == "qlora" else "lora"
        return {k: v.detach().clone().contiguous() for k, v in weights.items()}

    def _peft_inputs(self):
        if self._peft_model is None:
            from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

            base = self._base()
            for k, inp in enumerate(self.inputs):
                config = LoraConfig.from_pretrained(str(inp.folder))
                config.modules_to_save, config.inference_mode = None, True
                if k == 0:
                    model = get_peft_model(base, config, adapter_name="input0")
                else:
                    model.add_adapter(f"input{k}", config)
                set_peft_model_state_dict(model, inp.weights, adapter_name=f"input{k}")
            self._peft_model = model
        return self._peft_model

    # --- checks, warnings and the written run ----------------------------------------------

    def init_warning(self) -> str | None:
        """A warning when the paper's per-parameter rule combines LoRA or bottleneck modules
        that started from different initialisations (it assumes one shared start)."""
        if self.combine != "paper" or self.inputs[0].family not in ("lora", "bottleneck"):
            return None
        if len({_init_of(i) for i in self.inputs}) > 1:
            return ("warning: these adapters started from different initialisations; the "
                    "paper's per-parameter rule assumes one shared initialisation (train them "
                    "with the same seed, or init_adapter=<one run>), or use --combine exact")
        return None

    def apply(self, model, weights: dict[str, torch.Tensor]) -> None:
        """Put combined weights into a model opened from a result of this combiner."""
        if self.inputs[0].family == "full":
            model.load_state_dict(weights, strict=False)
        else:
            methods.get(self.method).set_adapter_weights(model, weights)

    def write(self, weights: dict[str, torch.Tensor], out: Path, expression: str,
              coefs: list[float], names: list[str], overwrite: bool = False,
              extra=None) -> Path:
        """A run folder (kind ``compose``): the combined weights, the first input's tokenizer
        and template, and a record of the expression, the rule and its inputs. ``extra``
        writes more files (a sweep's table) before the folder is moved into place."""
        from safetensors.torch import save_file

        from unitune.data.templates import load_template
        from unitune.models.loading import load_tokenizer

        first = self.inputs[0]
        with staged(out, overwrite) as tmp:
            load_tokenizer(str(first.folder), first.info.trust_remote_code).save_pretrained(
                str(tmp))
            load_template(first.folder).save(tmp)
            if first.family == "full":
                model = self._base()
                model.load_state_dict(weights, strict=False)
                model.save_pretrained(str(tmp))
            else:
                (tmp / CONFIG_FILE).write_text(json.dumps(self.config, indent=1),
                                               encoding="utf-8")
                save_file(weights, str(tmp / WEIGHTS_FILE))
            info = first.info
            write_run(tmp, RunRecord(
                kind="compose", status="finished", method=self.method,
                base_model=info.base_model, base_model_path=info.base_model_path,
                base_fingerprint=info.base_fingerprint, template=info.template,
                quantization=info.quantization, trust_remote_code=info.trust_remote_code,
                model_patches=info.model_patches, adapter_init=info.adapter_init,
                ended=time.time(),
                sources={"expression": expression, "combine": self.combine,
                         **({"rank": self.rank} if self.rank else {}),
                         **({"density": self.density} if self.density else {}),
                         "terms": [{"coef": c, "name": n, "folder": str(i.folder)}
                                   for c, n, i in zip(coefs, names, self.inputs, strict=True)]}))
            if extra is not None:
                extra(tmp)
        return out


def _init_of(inp: Module) -> str:
    """Where an adapter started: the digest of its saved initial weights (runs that share a
    seed or an ``init_adapter`` have byte-identical ones), else its recorded seed."""
    init = inp.info.adapter_init or {}
    for path in (Path(init.get("from", "")), inp.folder / INIT_FILE):
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"seed {init.get('seed')}"
