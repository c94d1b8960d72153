"""LoRA training throughput and peak memory: plain HF + PEFT against unitune's fast path.

Both sides build the same Llama-shaped model from a config (random bf16 weights, nothing is
downloaded), put LoRA (r=16, all seven projections) on it, and train on the same random
tokens with AdamW (fused), bf16, SDPA and (by default) activation checkpointing, in the same
process, timing steps after a warm-up with the device synchronised. Also measured in the same
run: the bf16 matmul peak of this GPU, for MFU (LoRA step ≈ 4 N FLOPs per token).

- baseline: transformers + peft as a user writes it (batch with an attention mask).
- unitune: the same, plus the kernels `unitune train` turns on when it finds them
  (liger-kernel's RMSNorm, RoPE, SwiGLU and fused linear + cross-entropy that never builds
  the 128K-vocabulary logits), fed by unitune's own collator. With --packed the batch is one
  packed row of independent sequences (position ids restarting, no KV cache), as
  `unitune train packing=true` feeds it; by default the rows are the full-length, unpadded
  rows that `unitune train` feeds when every example fills max_length.

    python benchmarks/train_throughput.py --shape 8b --seq 2048 --batch 4 [--no-checkpointing]
    python benchmarks/train_throughput.py --shape tiny --device cpu   # keeps the script honest

Prints tokens/s, peak memory and MFU of both, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from unitune.data.encode import Collator, Packed

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0)


def build(shape: str, device: torch.device, fast: bool, checkpointing: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    active = []
    if fast and device.type == "cuda":
        from unitune.train.kernels import apply_kernels

        active = apply_kernels(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    return model, active


def run(name: str, args, device: torch.device, fast: bool) -> dict:
    model, active = build(args.shape, device, fast, not args.no_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    batches = [torch.randint(vocab, (args.batch, args.seq), generator=g).to(device)
               for _ in range(4)]
    losses = []

    collate = Collator(pad_token_id=0)

    def step(i: int) -> float:
        ids = batches[i % len(batches)]
        if fast:  # what unitune's collator gives the model
            rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
            if args.packed:
                rows = list(Packed(rows, args.seq * args.batch))
            batch = {k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in collate(rows).items()}
            out = model(**batch)
        else:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss)

    for i in range(args.warmup):
        losses.append(step(i))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        losses.append(step(args.warmup + i))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = args.steps * args.batch * args.seq
    n = sum(p.numel() for p in model.parameters())
    result = {"name": name, "tokens_per_s": tokens / elapsed, "active": active,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30
              if device.type == "cuda" else None, "flops_per_s": 4 * n * tokens / elapsed,
              "losses": losses}
    return result


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--packed", action="store_true", help="unitune side: one packed row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    rows = []
    for name, fast in (("HF + PEFT (baseline)", False), ("unitune", True)):
        rows.append(run(name, args, device, fast))
        free(device)
    print(f"\nshape={args.shape} seq={args.seq} batch={args.batch} steps={args.steps} "
          f"checkpointing={not args.no_checkpointing} packed={args.packed} device={device}"
          + (f" bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    print(f"{'setup':<22}{'tokens/s':>10}{'peak GiB':>10}{'MFU':>7}  final loss  active")
    for r in rows:
        mfu = f"{r['flops_per_s'] / peak:.1%}" if peak else "-"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['name']:<22}{r['tokens_per_s']:>10,.0f}{mem:>10}{mfu:>7}  "
              f"{r['losses'][-1]:.4f}      {', '.join(r['active']) or '-'}")
    print(f"ratio unitune / baseline: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
