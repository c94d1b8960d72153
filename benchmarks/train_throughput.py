"""Training throughput and peak memory: plain HF + PEFT against unitune's fast path.

Both sides build the same Llama-shaped model from a config (random bf16 weights, nothing is
downloaded), put LoRA (r=16, all seven projections) on it, and train on the same random
tokens with AdamW (fused), bf16 and SDPA, in the same process, timing steps after a warm-up
with the device synchronised. Also measured in the same run: the bf16 matmul peak of this
GPU, for MFU (LoRA ≈ 4 N FLOPs per token, full fine-tuning 6 N, plus 2 N per recomputed
layer share under checkpointing, which MFU does not count).

- baseline: transformers + peft as a user writes it (batch with an attention mask,
  checkpointing of every layer or none).
- unitune: what `unitune train` runs: the kernels it turns on when it finds them
  (liger-kernel's RMSNorm, RoPE, SwiGLU and fused linear + cross-entropy that never builds
  the 128K-vocabulary logits), checkpointing as `gradient_checkpointing` says (true, false or
  the first N layers: `--ckpt-layers`), fed by unitune's own collator: full-length unpadded
  rows (what `unitune train` feeds when every example fills max_length), or with --packed one
  packed row of independent sequences, as `packing=true` feeds it.

--method qlora loads the base in 4-bit NF4 through unitune's loader (bitsandbytes; both sides),
--method full trains every weight (both sides). --suite runs the issue-6 set in one call: the
8B shape at 2048 x 4 with and without checkpointing, selective checkpointing, QLoRA, a 4096-token
run, and full fine-tuning of the 1B shape.

    python benchmarks/train_throughput.py --shape 8b --seq 2048 --batch 4 [--no-checkpointing]
    python benchmarks/train_throughput.py --suite          # on the GPU, about 6 minutes
    python benchmarks/train_throughput.py --shape tiny --device cpu   # keeps the script honest

Prints tokens/s, peak memory, MFU and the final loss of each side, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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


def build(shape: str, device: torch.device, unitune: bool, method: str, ckpt: bool | int,
          tmp: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.train import checkpointing

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if method == "qlora":  # random weights saved once, loaded 4-bit by unitune's loader
        from unitune.models.loading import load_base

        folder = tmp / f"{shape}-random"
        if not folder.exists():
            with torch.device(device):
                LlamaForCausalLM(config).to(dtype).save_pretrained(folder)
            free(device)
        model = load_base(str(folder), dtype, device, quantize="4bit")
        model.config._attn_implementation = "sdpa"
    else:
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
    active = []
    if unitune:
        from unitune.train.kernels import apply_kernels

        active = apply_kernels(model) if device.type == "cuda" else []
        note = checkpointing.enable(model, ckpt)
        active += [note] if note else []
    elif ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if method == "full":
        return model, active
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    return model, active


@dataclass
class Setting:
    shape: str
    seq: int
    batch: int
    method: str = "lora"
    ckpt: bool | int = True  # unitune side; the baseline checkpoints every layer if set
    packed: bool = False
    baseline: bool = True  # also run the baseline on this setting

    def label(self) -> str:
        ckpt = "ckpt all" if self.ckpt is True else "no ckpt" if self.ckpt is False else \
            f"ckpt {self.ckpt} layers"
        return (f"{self.shape} {self.method} {self.seq}x{self.batch} {ckpt}"
                f"{' packed' if self.packed else ''}")


SUITE = [
    Setting("8b", 2048, 4),
    Setting("8b", 2048, 4, ckpt=24, baseline=False),
    Setting("8b", 2048, 4, ckpt=16, baseline=False),
    Setting("8b", 2048, 4, ckpt=False),
    Setting("8b", 2048, 4, packed=True, baseline=False),
    Setting("8b", 4096, 2),
    Setting("8b", 2048, 4, method="qlora"),
    Setting("1b", 2048, 4, method="full", ckpt=False),
]


def run(setting: Setting, unitune: bool, args, device: torch.device, tmp: Path) -> dict:
    ckpt = setting.ckpt if unitune else bool(setting.ckpt)
    model, active = build(setting.shape, device, unitune, setting.method, ckpt, tmp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5 if setting.method == "full" else 1e-4,
                            fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    vocab = SHAPES[setting.shape]["vocab_size"]
    batches = [torch.randint(vocab, (setting.batch, setting.seq), generator=g)
               for _ in range(4)]
    if unitune:  # what unitune's collator gives the model, built before the clock starts
        collate = Collator(pad_token_id=0)
        inputs = []
        for ids in batches:
            rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
            if setting.packed:
                rows = list(Packed(rows, setting.seq * setting.batch))
            inputs.append({k: v.to(device) if torch.is_tensor(v) else v
                           for k, v in collate(rows).items()})
    else:
        inputs = [{"input_ids": ids.to(device), "labels": ids.to(device),
                   "attention_mask": torch.ones_like(ids, device=device)} for ids in batches]
    losses = []

    def step(i: int) -> float:
        out = model(**inputs[i % len(inputs)])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

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
    tokens = args.steps * setting.batch * setting.seq
    # (packed 4-bit parameters of a QLoRA base hold two weights per uint8)
    n = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    flops = (6 if setting.method == "full" else 4) * n * tokens / elapsed
    result = {"tokens_per_s": tokens / elapsed, "active": active, "flops_per_s": flops,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30
              if device.type == "cuda" else None, "losses": losses}
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
    ap.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--ckpt-layers", type=int, help="unitune side: checkpoint the first N layers")
    ap.add_argument("--packed", action="store_true", help="unitune side: one packed row")
    ap.add_argument("--suite", action="store_true", help="the whole issue-6 set (GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    ckpt = False if args.no_checkpointing else (args.ckpt_layers or True)
    settings = SUITE if args.suite else [
        Setting(args.shape, args.seq, args.batch, args.method, ckpt, args.packed)]
    print(f"device={device} steps={args.steps} warm-up={args.warmup}"
          + (f" bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" if peak else ""), flush=True)
    print(f"{'setting':<34}{'side':<10}{'tokens/s':>10}{'peak GiB':>10}{'MFU':>7}"
          f"{'final loss':>12}  ratio  active", flush=True)
    with tempfile.TemporaryDirectory(prefix="unitune-bench-") as tmp:
        for setting in settings:
            base = run(setting, False, args, device, Path(tmp)) if setting.baseline else None
            free(device)
            ours = run(setting, True, args, device, Path(tmp))
            free(device)
            for side, r in (("baseline", base), ("unitune", ours)):
                if r is None:
                    continue
                mfu = f"{r['flops_per_s'] / peak:.1%}" if peak else "-"
                mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
                ratio = f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x" \
                    if side == "unitune" and base else ""
                print(f"{setting.label():<34}{side:<10}{r['tokens_per_s']:>10,.0f}{mem:>10}"
                      f"{mfu:>7}{r['losses'][-1]:>12.4f}  {ratio:<6} "
                      f"{', '.join(r['active']) or '-'}", flush=True)


if __name__ == "__main__":
    main()
