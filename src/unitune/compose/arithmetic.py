"""Module arithmetic over trained adapters (Zhang et al., NeurIPS 2023), in weight space.

Owns combining the saved weights of several runs into one adapter, per the paper's operators:

- LoRA, per parameter: ``A = Σ |c_i| A_i`` and ``B = Σ c_i B_i``. A positive coefficient is
  addition (``λθ1 + (1-λ)θ2`` on A and B separately); a negative one is the negation operator
  ``⊖{A, B} = {A, -B}`` scaled by ``|c|``, so a single ``-1*x`` gives exactly ``-ΔW``.
- (IA)3, relative to the all-ones vector: ``l = 1 + Σ c_i (l_i - 1)``; equal to ``Σ c_i l_i``
  when the coefficients sum to 1, and ``1 - λ(l - 1)`` for a scaled negation.
- Bottleneck adapters: down-projections like LoRA's A (``Σ |c_i|``), up-projections like B
  (``Σ c_i``): negating the up-projection negates the adapter's output.
- ``delta`` semantics for LoRA: the exact ``ΔW = Σ c_i s_i B_i A_i`` (``s`` = alpha / r), as
  one LoRA of rank Σ r_i by concatenation, optionally SVD-truncated to a given rank.

Inputs are checked before any weight is combined: same base model, same method, same target
modules and (for per-parameter semantics) same shapes; different initialisations warn.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from unitune import methods
from unitune.errors import UserError
from unitune.methods import CONFIG_FILE, INIT_FILE, WEIGHTS_FILE
from unitune.run import RunRecord, read_finished, staged, write_run


def _kind(method: str) -> str:
    kind = methods.get(method).composable
    if kind is None:
        composable = [m.name for m in methods.all_methods() if m.composable]
        raise UserError(f"method '{method}' cannot be composed; module arithmetic works on "
                        f"{', '.join(composable)}")
    return kind


def _role(key: str, kind: str) -> str:
    """'a' (scaled by |c|), 'b' (scaled by c), or 'l' (IA3 vector) for one weight name."""
    if kind == "lora":
        if "lora_A" in key:
            return "a"
        if "lora_B" in key:
            return "b"
    elif kind == "ia3":
        if "ia3_l" in key:
            return "l"
    elif ".adapter.down." in key:
        return "a"
    elif ".adapter.up." in key:
        return "b"
    raise UserError(f"weight '{key}' is not an adapter weight (modules_to_save?); module "
                    "arithmetic is defined for adapter weights only")


def load_inputs(folders: list[Path]) -> list[dict]:
    """Run info, adapter config and weights of every input, checked to be composable."""
    from safetensors.torch import load_file

    inputs = []
    for folder in folders:
        info = read_finished(folder)
        kind = _kind(info.method)
        if not (folder / WEIGHTS_FILE).exists():
            raise UserError(f"{folder}: no {WEIGHTS_FILE} (only adapters can be composed)")
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        inputs.append({"folder": folder, "info": info, "config": config, "kind": kind,
                       "weights": load_file(str(folder / WEIGHTS_FILE))})
    first = inputs[0]
    for other in inputs[1:]:
        where = f"{other['folder']} vs {first['folder']}"
        if other["info"].base_model != first["info"].base_model:
            raise UserError(f"{where}: different base models ({other['info'].base_model} "
                            f"vs {first['info'].base_model}); adapters of different bases "
                            "cannot be combined")
        if other["kind"] != first["kind"]:
            raise UserError(f"{where}: different methods ({other['info'].method} vs "
                            f"{first['info'].method})")
        if set(other["weights"]) != set(first["weights"]):
            raise UserError(f"{where}: different target modules; compose adapters trained on "
                            "the same modules")
    return inputs


def _init_of(inp: dict) -> str:
    """Where an adapter started: the digest of its saved initial weights (runs that share a
    seed or an ``init_adapter`` have byte-identical ones), else its recorded seed."""
    init = inp["info"].adapter_init or {}
    for path in (Path(init.get("from", "")), inp["folder"] / INIT_FILE):
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"seed {init.get('seed')}"


def init_warning(inputs: list[dict]) -> str | None:
    inits = {_init_of(i) for i in inputs}
    if inputs[0]["kind"] == "lora" and len(inits) > 1:
        return ("warning: these LoRA adapters started from different initialisations; the "
                "paper's addition assumes one shared initialisation (train them with the same "
                "seed, or with init_adapter=<one run>)")
    return None


def combine(inputs: list[dict], coefs: list[float]) -> dict[str, torch.Tensor]:
    """Per-parameter composition (the paper's operators)."""
    kind = inputs[0]["kind"]
    out = {}
    for key, ref in inputs[0]["weights"].items():
        role = _role(key, kind)
        tensors = [i["weights"][key].float() for i in inputs]
        shapes = {t.shape for t in tensors}
        if len(shapes) > 1:
            raise UserError(f"weight '{key}' has different shapes {sorted(map(tuple, shapes))} "
                            "(different ranks?); use --semantics delta for LoRA")
        if role == "a":
            value = sum(abs(c) * t for c, t in zip(coefs, tensors, strict=True))
        elif role == "b":
            value = sum(c * t for c, t in zip(coefs, tensors, strict=True))
        else:
            value = 1 + sum(c * (t - 1) for c, t in zip(coefs, tensors, strict=True))
        out[key] = value.to(ref.dtype).contiguous()
    return out


def combine_delta(inputs: list[dict], coefs: list[float], rank: int | None
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """Exact ``ΔW = Σ c_i s_i B_i A_i`` for LoRA, as one adapter (scale 1) of rank Σ r or
    ``rank`` (SVD). Returns the weights and the rank."""
    if inputs[0]["kind"] != "lora":
        raise UserError("--semantics delta applies to LoRA adapters only")
    scales = []
    for i in inputs:
        cfg = i["config"]
        r, alpha = cfg["r"], cfg["lora_alpha"]
        scales.append(alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r)
    out: dict[str, torch.Tensor] = {}
    ranks = set()
    for key in inputs[0]["weights"]:
        if "lora_A" not in key:
            continue
        bkey = key.replace("lora_A", "lora_B")
        a_parts = [i["weights"][key].float() for i in inputs]
        b_parts = [c * s * i["weights"][bkey].float()
                   for c, s, i in zip(coefs, scales, inputs, strict=True)]
        a_cat, b_cat = torch.cat(a_parts, 0), torch.cat(b_parts, 1)
        if rank is not None:
            u, sv, vh = torch.linalg.svd(b_cat @ a_cat, full_matrices=False)
            b_cat = u[:, :rank] * sv[:rank]
            a_cat = vh[:rank]
        out[key], out[bkey] = a_cat.contiguous(), b_cat.contiguous()
        ranks.add(a_cat.shape[0])
    return out, ranks.pop()


def write(inputs: list[dict], weights: dict[str, torch.Tensor], out: Path, expression: str,
          coefs: list[float], names: list[str], delta_rank: int | None = None,
          overwrite: bool = False, extra=None) -> Path:
    """A run folder (kind ``compose``): the composed adapter, the first input's tokenizer and
    template, and a record of the expression and its inputs. ``extra(folder)`` writes more
    files (a sweep's table) before the folder is moved into place."""
    from safetensors.torch import save_file

    from unitune.data.templates import load_template
    from unitune.models.loading import load_tokenizer

    first = inputs[0]
    with staged(out, overwrite) as tmp:
        load_tokenizer(str(first["folder"])).save_pretrained(str(tmp))
        load_template(first["folder"]).save(tmp)
        config = dict(first["config"])
        if delta_rank is not None:
            config.update(r=delta_rank, lora_alpha=delta_rank, use_rslora=False,
                          rank_pattern={}, alpha_pattern={})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
        save_file(weights, str(tmp / WEIGHTS_FILE))
        info: RunRecord = first["info"]
        write_run(tmp, RunRecord(
            kind="compose", status="finished", method=info.method, base_model=info.base_model,
            base_model_path=info.base_model_path, base_fingerprint=info.base_fingerprint,
            template=info.template, quantization=info.quantization,
            trust_remote_code=info.trust_remote_code, model_patches=info.model_patches,
            adapter_init=info.adapter_init, ended=time.time(),
            sources={"expression": expression,
                     "semantics": "delta" if delta_rank is not None else "params",
                     "terms": [{"coef": c, "name": n, "folder": str(i["folder"])}
                               for c, n, i in zip(coefs, names, inputs, strict=True)]}))
        if extra is not None:
            extra(tmp)
    return out
