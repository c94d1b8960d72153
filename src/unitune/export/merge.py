"""Folding an adapter into its base and saving a standard Hugging Face checkpoint.

A quantized base is never merged in place: the base is opened again in 16-bit (bf16 on a GPU,
fp32 on a CPU) from its original weights, the adapter is merged there, and the result is saved
in safetensors with the tokenizer and the run's template as a run of kind ``merge`` (method
``full``), so every command can use it.
"""

from __future__ import annotations

import time
from pathlib import Path

from unitune import methods
from unitune.errors import UserError
from unitune.run import RunRecord, check_replaceable, open_model, read_finished, staged, write_run


def merge(run_dir: Path, out: Path, dtype: str = "auto", overwrite: bool = False,
          quantize: str | None = None, trust_remote_code: bool = False, log=print) -> Path:
    """Merge in 16-bit and save; ``quantize`` ('8bit' / '4bit', CUDA + bitsandbytes) then
    re-quantizes the merged weights and saves those instead. ``trust_remote_code``: the run's
    model may run its own code."""
    info = read_finished(run_dir)
    method = methods.get(info.method)
    if quantize:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--quantize {quantize} needs a CUDA GPU with bitsandbytes; merge "
                            "without it and quantize at load time on the GPU machine")
    check_replaceable(out, overwrite)
    method.check_foldable(str(run_dir), "use the run folder as it is")
    if info.quantization:
        log(f"the run trained on a {info.quantization} base: merging into the 16-bit weights "
            "instead (de-quantized), never into the quantized ones")
    model, tokenizer, template = open_model(run_dir, dtype=dtype, quantization="none",
                                            trust_remote_code=trust_remote_code)
    if not method.whole_model:
        model = model.merge_and_unload()
    record = RunRecord(kind="merge", status="finished", method="full",
                       base_model=info.base_model, base_model_path=info.base_model_path,
                       template=template.name, trust_remote_code=info.trust_remote_code,
                       quantization=quantize, ended=time.time(),
                       sources={"run": str(run_dir), "method": info.method,
                                "base_model": info.base_model_path})
    with staged(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        template.save(tmp)
        write_run(tmp, record)
        if quantize:
            import torch

            from unitune.models.loading import load_base

            del model
            quantized = load_base(str(tmp), torch.bfloat16, torch.device("cuda"),
                                  info.trust_remote_code, quantize=quantize)
            for weights in tmp.glob("*.safetensors*"):
                weights.unlink()
            quantized.save_pretrained(tmp, safe_serialization=True)
            log(f"re-quantized the merged 16-bit weights to {quantize}")
    return out
