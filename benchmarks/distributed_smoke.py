"""Smoke test of multi-process training on whatever machine this is: `unitune train` under
torchrun with DDP (LoRA) and, on CUDA, FSDP2 (full fine-tuning), then each run reopened and
asked one question.

For each run it prints the world size, the strategy the Trainer used, steps, tokens/s, peak
GPU memory, the loss at the start and the end, the saved weights (tensors and bytes), and what
the reopened run answers. A distributed run that saves an empty or partial adapter (the known
ZeRO-3 failure elsewhere) shows up here as missing tensors.

    python benchmarks/distributed_smoke.py                    # GPU: DDP + FSDP2 on every GPU
    python benchmarks/distributed_smoke.py --device cpu --nproc 2   # CPU: DDP over gloo

The model is a Llama of --shape with random weights and the tiny preset's tokenizer (nothing
downloaded), trained on the synthetic suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)

SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "tiny": (64, 128, 2, 2, 1),
    "150m": (768, 2048, 12, 12, 4),
    "1b": (2048, 5632, 16, 32, 8),
}


def build_base(shape: str, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.models.loading import load_tokenizer
    from unitune.models.tiny import preset_tokenizer

    tok = load_tokenizer(str(preset_tokenizer("tiny-llama", log=lambda *a: None)))
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def train(name: str, args, base: Path, data: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(args.nproc), "-m", "unitune.cli", "train", "--data", str(data), "-o",
           str(out / name), "--base-model", str(base), "--max-steps", str(args.steps),
           "--batch-size", str(args.batch * args.nproc), "--no-progress", "logging_steps=1",
           f"device={args.device}", "template=alpaca", "max_length=256", *extra]
    start = time.time()  # (the processes import unitune from this checkout, installed or not)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get(
        "PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - start
    if proc.returncode:
        return {"run": name, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
    from safetensors import safe_open

    from unitune.run import read_run

    record = read_run(out / name)
    tensors = bytes_ = 0
    for f in (out / name).glob("*.safetensors"):
        if f.name == "adapter_init.safetensors":  # (the initial adapter, kept for arithmetic)
            continue
        with safe_open(str(f), "pt") as st:
            tensors += len(list(st.keys()))
        bytes_ += f.stat().st_size
    from unitune.train.callbacks import read_metrics

    (logged,) = read_metrics(out / name / "metrics.jsonl", "loss")
    losses = [loss for _, loss in logged]
    m = record.metrics
    return {"run": name, "world_size": record.world_size, "steps": m["steps"],
            "tokens_per_s": round(m["tokens_seen"] / m["train_runtime_s"]),
            "parallelism": m.get("parallelism"),
            "peak_gib": m["peak_gpu_memory_gib"], "loss_first": round(losses[0], 3),
            "loss_last": round(losses[-1], 3), "saved_tensors": tensors,
            "saved_mib": round(bytes_ / 2**20, 1), "wall_s": round(wall, 1),
            "optimizations": record.optimizations}


def answer(folder: Path, device: str) -> str:
    from unitune import Conversation, Decoding, answer, open_model

    model, tok, template = open_model(folder, device=device, log=lambda *a: None)
    question = Conversation.single("Sort the numbers in ascending order.", "", "3 1 2")
    return answer(model, tok, template, [question], Decoding(max_new_tokens=8))[0]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="1b")
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    work = Path(tempfile.mkdtemp(prefix="unitune-dist-"))
    base, out = work / "base", work / "runs"
    build_base(args.shape, base)
    from unitune.data.synth import DEFAULT_FAMILIES, write_suite

    data = write_suite(work / "data", list(DEFAULT_FAMILIES), 200, 0, 0, 0, 0)["train"]
    runs = [("ddp-lora", ["method=lora", "lora.r=16", "lora.target_modules=all-linear"])]
    if args.device == "cuda":
        runs.append(("fsdp2-full", ["method=full", "fsdp=true", "lr=1e-5"]))
    print(f"{args.shape} Llama, {args.nproc} process(es) on {args.device}, {args.steps} steps "
          f"x {args.batch * args.nproc} examples")
    for name, extra in runs:
        result = train(name, args, base, data, out, extra)
        if "error" not in result:
            result["answer"] = answer(out / name, args.device)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
