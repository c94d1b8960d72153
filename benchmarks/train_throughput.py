"""Training throughput and peak memory: plain HF + PEFT against unitune's fast path.

Both sides build the same Llama-shaped model from a config (random bf16 weights, nothing is
downloaded), put LoRA (r=16, all seven projections) on it, and train on the same random
tokens with AdamW (fused), bf16 and SDPA, in the same process, timing steps after a warm-up
with the device synchronised. Also measured in the same run: the bf16 matmul peak of this
GPU, for MFU (LoRA ≈ 4 N FLOPs per token, full fine-tuning 6 N, plus 2 N per recomputed
layer share under checkpointing, which MFU does not count).

- baseline: transformers + peft as a user writes it (batch with an attention mask,
  checkpointing of every layer or none), without autocast as the SPEC measured it, or under
  bf16 autocast as the HF Trainer runs it with `--baseline-autocast` (which matters most for
  QLoRA: PEFT's k-bit preparation upcasts the unquantized weights to fp32).
- unitune: what `unitune train` runs (`train/speed.py`): the kernels it turns on when it
  finds them (liger-kernel's RMSNorm, RoPE, SwiGLU and fused linear + cross-entropy that never
  builds the 128K-vocabulary logits), the attention it picks (`--attention`; auto:
  FlexAttention for packed rows on a GPU), checkpointing as `gradient_checkpointing` says
  (true, false or the first N layers: `--ckpt-layers`), offloaded to host memory with
  `--offload`, under bf16 autocast as the Trainer runs it, with LoRA layers that read their
  bf16 inputs as they are (PEFT otherwise casts each to fp32 first), fed by unitune's own
  collator: full-length unpadded rows (what `unitune train` feeds when every example fills
  max_length), or with --packed one packed row of independent sequences, as `packing=true`
  feeds it.

--method qlora loads the base in 4-bit NF4 through unitune's loader (bitsandbytes; both sides;
the baseline prepares it with PEFT's k-bit preparation, unitune as `unitune train` does),
--method full trains every weight (both sides). --suite runs the issue-6 set in one call: the
8B shape at 2048 x 4 with and without checkpointing, selective and offloaded checkpointing,
packed rows under FlexAttention and SDPA, a 4096-token run, QLoRA and the low-memory mode
(QLoRA + offloaded checkpointing), and full fine-tuning of the 1B shape. --profile adds, for
each unitune side, where the time of two more steps goes (matmuls, attention, fused kernels,
elementwise, copies, optimizer; device time on a GPU, CPU time on the CPU) and the top kernels.

--data FILE trains on real instruction data instead of full-length random rows (Alpaca
template, Llama-2 tokenizer from --tokenizer-model): the baseline pads each batch of examples
to its longest, as HF + PEFT recipes do, and unitune packs them (`packing=true`, FlexAttention
on a GPU); both sides see the same examples in the same number of steps, and tokens/s counts
real (non-padding) tokens. Each step holds the same examples on both sides, so the losses
agree step by step: packing changes the speed, not what is learned.

    python benchmarks/train_throughput.py --shape 8b --seq 2048 --batch 4 [--no-checkpointing]
    python benchmarks/train_throughput.py --suite 0,3,4,6,10 --steps 6 --warmup 2 --profile  # GPU
    python benchmarks/train_throughput.py --suite 8: --steps 6 --warmup 2 --profile \
        --baseline-autocast  # GPU
    python benchmarks/train_throughput.py --suite 0:9 --suite-shape tiny --device cpu  # check
    python benchmarks/train_throughput.py --shape tiny --device cpu   # keeps the script honest
    python benchmarks/train_throughput.py --shape small --device cpu --seq 1024 --batch 2 \
        --data ../shared/data/instruct/alpaca_en_2k.json --no-checkpointing  # real lengths

Prints tokens/s, peak memory, MFU and the final loss of each side, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import get_args

import torch

from unitune.config import TrainConfig
from unitune.data.encode import Collator, Packed
from unitune.methods.peft_methods import prepare_quantized
from unitune.models.families import FAMILIES
from unitune.train import speed

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024),
}
TARGETS = list(FAMILIES["llama"].linear)  # all seven projections


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


@dataclass
class Setting:
    shape: str
    seq: int
    batch: int
    method: str = "lora"
    ckpt: bool | int = True  # unitune side; the baseline checkpoints every layer if set
    packed: bool = False  # unitune side
    attention: str = "auto"  # unitune side
    offload: bool = False  # unitune side: checkpointed layers' inputs in host memory
    baseline: bool = True  # also run the baseline on this setting
    real: bool = False  # the examples of --data (both sides; unitune packs them)

    def label(self) -> str:
        ckpt = "ckpt all" if self.ckpt is True else "no ckpt" if self.ckpt is False else \
            f"ckpt {self.ckpt}"
        extra = [ckpt] + ["offload"] * self.offload + ["packed"] * self.packed + \
            [self.attention] * (self.attention != "auto") + ["real data"] * self.real
        return f"{self.shape} {self.method} {self.seq}x{self.batch} {' '.join(extra)}"


SUITE = [
    Setting("8b", 2048, 4),
    Setting("8b", 2048, 4, ckpt=24, baseline=False),
    Setting("8b", 2048, 4, ckpt=20, baseline=False),
    Setting("8b", 2048, 4, ckpt=16, baseline=False),
    Setting("8b", 2048, 4, ckpt=False),
    Setting("8b", 2048, 4, offload=True, baseline=False),
    Setting("8b", 2048, 4, packed=True, baseline=False),
    Setting("8b", 2048, 4, packed=True, attention="sdpa", baseline=False),
    Setting("8b", 4096, 2),
    Setting("8b", 2048, 4, method="qlora"),
    Setting("8b", 2048, 4, method="qlora", offload=True, baseline=False),  # low-memory mode
    Setting("1b", 2048, 4, method="full", ckpt=False),
    Setting("8b", 2048, 4, real=True),  # only with --data
]


def suite(which: str, shape: str | None = None) -> list[Setting]:
    """The settings of SUITE that ``which`` names ('FROM:TO' or 'I,J,...'), at ``shape`` if
    given (checking the suite on the CPU)."""
    if ":" in which:
        chosen = SUITE[slice(*(int(x) if x else None for x in which.split(":")))]
    else:
        chosen = [SUITE[int(i)] for i in which.split(",")]
    if not shape:
        return chosen
    layers = SHAPES[shape]["num_hidden_layers"]  # (selective checkpointing: at most all)
    return [replace(s, shape=shape, ckpt=min(s.ckpt, layers) if type(s.ckpt) is int else s.ckpt)
            for s in chosen]


def build(setting: Setting, device: torch.device, unitune: bool, tmp: Path,
          min_vocab: int = 0):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SHAPES[setting.shape]  # (real data needs at least its tokenizer's vocabulary)
    config = LlamaConfig(**{**shape, "vocab_size": max(shape["vocab_size"], min_vocab)},
                         max_position_embeddings=8192, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if setting.method == "qlora":  # random weights saved once, loaded 4-bit by unitune's loader
        from unitune.models.loading import load_base

        folder = tmp / f"{setting.shape}-random"
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
        active = speed.optimize(model, "auto", setting.attention, setting.ckpt, setting.offload,
                                setting.packed)
        if speed.LIGER in active:  # what the Trainer does for `unitune train` (use_liger_kernel)
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model)
    elif setting.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if setting.method == "full":
        return model, active
    if setting.method == "qlora":
        model = prepare_quantized(model) if unitune else \
            prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    return model, active + (speed.optimize_adapter(model, dtype, "auto") if unitune else [])


def run(setting: Setting, unitune: bool, args, device: torch.device, tmp: Path) -> dict:
    model, active = build(setting, device, unitune, tmp, args.vocab if setting.real else 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5 if setting.method == "full" else 1e-4,
                            fused=device.type == "cuda")
    if setting.real:
        batches = real_batches(args.examples, setting, args.warmup + args.steps, unitune)
    else:
        batches = random_batches(setting, unitune)
    inputs = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
              for b, _ in batches]  # built before the clock starts
    losses = []
    # unitune trains 16-bit models under autocast, as the Trainer runs `unitune train`; the
    # baseline does with --baseline-autocast (a Trainer user's bf16=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) \
        if device.type == "cuda" and (unitune or args.baseline_autocast) \
        else contextlib.nullcontext()

    def step(i: int) -> float:
        with autocast:
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
    timed = [(args.warmup + i) % len(batches) for i in range(args.steps)]
    tokens = sum(batches[i][1] for i in timed)
    computed = sum(inputs[i]["input_ids"].numel() for i in timed)
    # (packed 4-bit parameters of a QLoRA base hold two weights per uint8)
    n = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    flops = (6 if setting.method == "full" else 4) * n * tokens / elapsed
    if computed > tokens:  # what the model computed on padding
        active = [*active, f"padding: {1 - tokens / computed:.0%} of the positions"]
    result = {"tokens_per_s": tokens / elapsed, "active": active, "flops_per_s": flops,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30
              if device.type == "cuda" else None,
              "loss": losses[-1]}
    if unitune and args.profile:
        result["profile"] = profile(lambda i: step(args.warmup + args.steps + i), device)
    return result


def random_batches(setting: Setting, unitune: bool) -> list[tuple[dict, int]]:
    """Four batches of full-length random rows and their token counts (with an all-ones
    attention mask; unitune's side as one packed row with ``setting.packed``)."""
    g = torch.Generator().manual_seed(0)
    vocab = SHAPES[setting.shape]["vocab_size"]
    out = []
    for _ in range(4):
        ids = torch.randint(vocab, (setting.batch, setting.seq), generator=g)
        rows = [{"input_ids": r, "labels": r} for r in ids.tolist()]
        if unitune and setting.packed:
            rows = list(Packed(rows, setting.seq * setting.batch))
        out.append((Collator(pad_token_id=0)(rows), ids.numel()))
    return out


def real_examples(path: str, tokenizer_model: str, max_length: int) -> tuple[list[dict], int]:
    """The file's examples encoded as `unitune train` encodes them (Alpaca template, Llama-2
    tokenizer, loss on the replies), in a seeded random order, and the vocabulary size."""
    import random

    sys.path.insert(0, str(Path(__file__).parent))
    from tokenize_throughput import llama2_tokenizer

    from unitune.data.encode import encode_conversations
    from unitune.data.readers import read_conversations
    from unitune.data.templates import get_template

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = llama2_tokenizer(Path(tokenizer_model).parents[1], Path(tmp)) \
            if Path(tokenizer_model).name == "llama2_sp.model" else None
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_model)
        rows, _ = encode_conversations(read_conversations(path, skip_invalid=True), tokenizer,
                                       get_template("alpaca"), max_length)
    random.Random(0).shuffle(rows)
    return rows, len(tokenizer)


def real_batches(examples: list[dict], setting: Setting, n_steps: int, unitune: bool
                 ) -> list[tuple[dict, int]]:
    """``n_steps`` batches of real examples and their real token counts. unitune: packed rows
    of ``seq`` tokens, ``batch`` rows a step, as `packing=true` feeds them; the baseline: the
    same examples in as many steps, each batch padded to its longest example."""
    packed = Packed(examples, setting.seq)
    steps = [[packed[g] for g in range(i, min(i + setting.batch, len(packed)))]
             for i in range(0, len(packed), setting.batch)][:n_steps]
    collate = Collator(pad_token_id=0)
    if unitune:
        return [(collate(rows), sum(len(r["input_ids"]) for r in rows)) for rows in steps]
    counts = [0]
    for rows in steps:  # how many examples each packed step holds
        counts.append(counts[-1] + sum(p == 0 for r in rows for p in r["position_ids"]))
    batches = [collate(examples[a:b]) for a, b in zip(counts, counts[1:], strict=False)]
    return [(b, int(b["attention_mask"].sum())) for b in batches]


# what a kernel or op does, by its name; the first kind whose words match wins
KINDS = [
    ("attention", ("flash", "fmha", "attention", "attn", "flex", "sdpa")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")),
    ("copies", ("memcpy", "memset", "copy", "aten::to", "contiguous", "pin")),
    ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "aten::mm", "addmm", "bmm",
                "matmul", "linear", "mmbackward")),
    ("elementwise", ("elementwise", "reduce", "aten::", "vectorized")),
    ("fused (triton)", ("triton", "liger", "kernel")),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, words in KINDS if any(w in low for w in words)), "other")


def profile(step, device: torch.device, steps: int = 2) -> str:
    """Where the time of ``steps`` training steps goes: device time per kernel on a GPU, self
    CPU time per op on the CPU, by kind, and the busiest kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    times: dict[str, float] = {}
    if cuda:
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                times[e.name] = times.get(e.name, 0.0) + e.device_time_total / 1e6
    else:
        for e in prof.key_averages():
            times[e.key] = e.self_cpu_time_total / 1e6
    busy = sum(times.values())
    by_kind: dict[str, float] = {}
    for name, t in times.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + t
    where = "GPU" if cuda else "CPU"
    lines = [f"  profile of {steps} steps: {wall:.2f} s wall, {where} busy {busy:.2f} s "
             f"({busy / wall:.0%}); by kind: " + ", ".join(
                 f"{k} {t / busy:.0%}" for k, t in sorted(by_kind.items(), key=lambda x: -x[1]))]
    for name, t in sorted(times.items(), key=lambda x: -x[1])[:8]:
        lines.append(f"    {t / busy:6.1%}  {kind_of(name):<15} {name[:90]}")
    return "\n".join(lines)


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
    ap.add_argument("--offload", action="store_true",
                    help="unitune side: checkpointed layers' inputs in pinned host memory")
    ap.add_argument("--packed", action="store_true", help="unitune side: one packed row")
    attention = get_args(TrainConfig.model_fields["attention"].annotation)
    ap.add_argument("--attention", choices=attention, default="auto",
                    help="unitune side: the attention implementation")
    ap.add_argument("--profile", action="store_true",
                    help="unitune side: where the time of two more steps goes")
    ap.add_argument("--data", help="real instruction data (e.g. ../shared/data/instruct/"
                    "alpaca_en_2k.json): padded batches against packed rows")
    ap.add_argument("--tokenizer-model", default=str(Path(__file__).resolve().parents[2]
                    / "shared/data/tokenizers/llama2_sp.model"),
                    help="with --data: llama2_sp.model, or a tokenizer folder")
    ap.add_argument("--baseline-autocast", action="store_true",
                    help="run the baseline under bf16 autocast too, as the HF Trainer does "
                    "with bf16=True (the SPEC's baseline numbers are without)")
    ap.add_argument("--suite", nargs="?", const=":", metavar="FROM:TO|I,J,...",
                    help="the issue-6 set (GPU), or the settings FROM:TO of it (e.g. 0:6), or "
                    "those numbered I,J,... (e.g. 0,3,4)")
    ap.add_argument("--suite-shape", choices=list(SHAPES),
                    help="run the suite's settings at this shape (tiny: a CPU check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    ckpt = False if args.no_checkpointing else (args.ckpt_layers or True)
    settings = [s for s in suite(args.suite, args.suite_shape) if args.data or not s.real] \
        if args.suite else [
        Setting(args.shape, args.seq, args.batch, args.method, ckpt, bool(args.data) or
                args.packed, args.attention, args.offload, real=bool(args.data))]
    if any(s.real for s in settings):
        args.examples, args.vocab = real_examples(args.data, args.tokenizer_model,
                                                  max(s.seq for s in settings if s.real))
    print(f"device={device} steps={args.steps} warm-up={args.warmup} baseline "
          f"{'under' if args.baseline_autocast else 'without'} bf16 autocast (on a GPU)"
          + (f" bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" if peak else ""), flush=True)
    print(f"{'setting':<46}{'side':<10}{'tokens/s':>10}{'peak GiB':>10}{'MFU':>7}"
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
                print(f"{setting.label():<46}{side:<10}{r['tokens_per_s']:>10,.0f}{mem:>10}"
                      f"{mfu:>7}{r['loss']:>12.4f}  {ratio:<6} "
                      f"{'; '.join(r['active']) or '-'}", flush=True)
            if "profile" in ours:
                print(ours["profile"], flush=True)


if __name__ == "__main__":
    main()
