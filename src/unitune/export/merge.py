"""Folding an adapter into its base and saving a standard Hugging Face checkpoint.

A quantized base is never merged in place: the base is loaded again in 16-bit (bf16 on a GPU,
fp32 on a CPU) from its original weights, the adapter is merged there, and the result is saved
in safetensors with the tokenizer and the run's template, so every command can use it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from unitune.errors import UserError


def merge(run_dir: Path, out: Path, dtype: str = "auto", overwrite: bool = False,
          quantize: str | None = None, log=print) -> Path:
    """Merge in 16-bit and save; ``quantize`` ('8bit' / '4bit', CUDA + bitsandbytes) then
    re-quantizes the merged weights and saves those instead."""
    from unitune.methods.registry import BOTTLENECK_METHODS, PROMPT_METHODS, WEIGHT_METHODS
    from unitune.models.loading import (
        RUN_FILE,
        load_run,
        move_into_place,
        read_run,
        resolve_model_path,
    )

    info = read_run(run_dir)
    method = info["method"]
    if quantize:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--quantize {quantize} needs a CUDA GPU with bitsandbytes; merge "
                            "without it and quantize at load time on the GPU machine")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if method in BOTTLENECK_METHODS:
        raise UserError("bottleneck adapters have a non-linearity and cannot be folded into "
                        "the base weights; use the run folder as it is")
    if method in PROMPT_METHODS:
        raise UserError(f"{method} adds virtual tokens, not weight updates; nothing to merge")
    if info.get("quantization"):
        log(f"the run trained on a {info['quantization']} base: merging into the 16-bit "
            "weights instead (de-quantized), never into the quantized ones")
    model, tokenizer, template = load_run(run_dir, dtype=dtype)
    if method not in WEIGHT_METHODS:
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    template.save(tmp)
    merged = {"status": "finished", "method": "full", "base_model": info["base_model"],
              "template": template.name, "merged_from": {
                  "run": str(run_dir), "method": method,
                  "base_model": info.get("base_model_path")
                  or resolve_model_path(info["base_model"])}}
    (tmp / RUN_FILE).write_text(json.dumps(merged, indent=1), encoding="utf-8")
    if quantize:
        import torch

        from unitune.models.loading import load_base

        del model
        quantized = load_base(str(tmp), torch.bfloat16, torch.device("cuda"),
                              quantize=quantize)
        qtmp = out.with_name(out.name + ".quantized")
        shutil.rmtree(qtmp, ignore_errors=True)
        quantized.save_pretrained(qtmp, safe_serialization=True)
        for name in (RUN_FILE, "template.json"):
            shutil.copy(tmp / name, qtmp / name)
        tokenizer.save_pretrained(qtmp)
        shutil.rmtree(tmp)
        qtmp.rename(tmp)
        log(f"re-quantized the merged 16-bit weights to {quantize}")
    move_into_place(tmp, out)
    return out
