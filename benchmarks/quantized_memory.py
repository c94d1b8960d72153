"""Peak GPU memory and step time of LoRA on a bf16, 8-bit and 4-bit (QLoRA) base.

Builds the model shape from a config with random weights (nothing is downloaded), saves it as
safetensors with the tiny preset's tokenizer, and runs `unitune train` once per setting in its
own process (so each peak is its own), on the synthetic suite, reading the peak from the run's
run.json. Needs a CUDA GPU and bitsandbytes.

    python benchmarks/quantized_memory.py --shape tiny
    python benchmarks/quantized_memory.py --shape 8b --seq 512
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
}
SETTINGS = [("lora, bf16 base", ["method=lora"]),
            ("lora, 8-bit base", ["method=lora", "load_in=8bit"]),
            ("qlora, 4-bit NF4 base", ["method=qlora"])]


def build(shape: str, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unitune.models.tiny import preset_tokenizer

    tok = AutoTokenizer.from_pretrained(preset_tokenizer("tiny-llama-test", log=lambda *a: None))
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    print(f"{shape}: {model.num_parameters() / 1e9:.3f}B parameters", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    from unitune.run import read_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(args.shape, tmp / "model")
        subprocess.run([sys.executable, "-m", "unitune.cli", "data", "synth", "--out",
                        str(tmp / "data"), "--train", "64"], check=True)
        rows = []
        for i, (name, overrides) in enumerate(SETTINGS):
            out = tmp / f"run{i}"
            cmd = [sys.executable, "-m", "unitune.cli", "train", f"base_model={tmp / 'model'}",
                   f"data={tmp / 'data' / 'train.json'}", f"output_dir={out}",
                   f"max_steps={args.steps}", f"batch_size={args.batch}",
                   f"max_length={args.seq}", "template=alpaca", "lora.r=16",
                   "gradient_checkpointing=true", "packing=true", "logging_steps=1",
                   "--no-progress", *overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n", flush=True)
                rows.append((name, "-", "-", "failed: " + (proc.stderr.strip().splitlines()
                                                           or ["?"])[-1][:200]))
                continue
            info = read_run(out)
            m = info.metrics
            rows.append((name, m["peak_gpu_memory_gib"], round(m["train_runtime_s"]
                         / m["steps"], 3), f"{info.trainable_parameters:,} trainable"))
    print(f"\nshape={args.shape} seq={args.seq} batch={args.batch} steps={args.steps}")
    print(f"{'setting':<24}{'peak GiB':>10}{'s/step':>9}  note")
    for name, peak, sps, note in rows:
        print(f"{name:<24}{peak:>10}{sps:>9}  {note}")


if __name__ == "__main__":
    main()
