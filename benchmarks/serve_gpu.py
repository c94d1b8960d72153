"""Decoding speed on a GPU (issue 14's targets): an 8B-shaped random bf16 Llama, 128-token
prompts, 256 new tokens, greedy.

    python benchmarks/serve_gpu.py --shape 8b --out /tmp/rand8b     # on the H200
    python benchmarks/serve_gpu.py --shape tiny --seconds 5          # a CPU check of the script

Measures, in one run: plain `model.generate` at batch 1 and at batch 32 (the baseline); the
engine at batch 1 with the dynamic cache and with the static cache (compiled decoding on a
GPU); and `unitune serve` with 32 concurrent clients (completions with token-id prompts,
`ignore_eos`) with and without `--static-cache`. Prints one table with the targets (150 tokens/s
at batch 1, 2,300 tokens/s aggregate at 32 clients) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_load import load, start_server  # noqa: E402

SHAPES = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     max_position_embeddings=8192),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                       max_position_embeddings=1024)}


def build(shape: str, out: Path, device: str) -> None:
    """A random bf16 Llama of ``shape`` saved in ``out`` (with the tiny preset's tokenizer:
    only token counts matter here)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unitune.models.tiny import preset_tokenizer

    if (out / "config.json").exists():
        return
    config = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(preset_tokenizer("tiny-llama", log=lambda *a: None))
                                  ).save_pretrained(str(out))
    del model


def timed(fn, repeats: int = 1, warm=None) -> float:
    (warm or fn)()  # warm-up (and compilation)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def plain_generate(out: Path, prompts: list[list[int]], batches, n: int, device: str
                   ) -> dict:
    """The baseline: plain ``model.generate`` of the same model, at each batch size."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).to(device)
    model.eval()
    speeds = {}
    for batch in batches:
        ids = torch.tensor(prompts[:batch], device=device)

        def run(ids=ids, n=n):
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)

        # (a short warm-up: the dynamic cache compiles nothing, and 256 tokens at batch 1
        # take 17 s of a GPU session's minutes)
        speeds[f"plain generate, batch {batch}"] = batch * n / timed(
            run, warm=lambda run=run: run(n=min(n, 16)))
    return speeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="8b")
    ap.add_argument("--out", default="/tmp/unitune-serve-gpu")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) / args.shape
    t0 = time.time()
    build(args.shape, out, device)
    print(f"model ready in {time.time() - t0:.0f}s", flush=True)
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding

    vocab = SHAPES[args.shape]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, min(vocab, 900), (args.prompt_tokens,), generator=g).tolist()
               for _ in range(64)]
    n = args.new_tokens
    results = {}
    results.update(plain_generate(out, prompts, (1, args.clients), n, device))
    print(results, flush=True)
    for static in (False, True):
        with Engine(str(out), device=device, static_cache=static, log=lambda *a: None) as engine:
            request = Request(engine.base_id, "", Decoding(max_new_tokens=n), ignore_eos=True,
                              prompt_ids=prompts[0])
            seconds = timed(lambda request=request, engine=engine: engine.generate(request))
            name = "static cache (compiled on a GPU)" if static else "dynamic cache"
            results[f"engine, batch 1, {name}"] = n / seconds
            print(results, flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for static in (False, True):
        flags = [str(out), "--device", device, "--max-batch", str(args.clients)] + \
            (["--static-cache"] if static else [])
        server, url, models = start_server(flags)
        bodies = [{"model": models[0]["id"], "prompt": p, "max_tokens": n, "temperature": 0,
                   "ignore_eos": True} for p in prompts]
        try:
            load(url, bodies, args.clients, min(args.seconds, 20), "/v1/completions")  # warm
            row = load(url, bodies, args.clients, args.seconds, "/v1/completions")
        finally:
            server.terminate()
            server.wait(timeout=120)
        name = f"unitune serve, {args.clients} clients" + (", --static-cache" if static else "")
        results[name] = row["tokens_per_s"]
        results[name + " (p50 s, errors)"] = (row["p50_s"], row["errors"])
        print(results, flush=True)
    print(f"\n{args.shape} on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
          f"{args.prompt_tokens}-token prompts, {n} new tokens, greedy")
    print("| setting | generated tokens/s |\n|---|---|")
    for name, value in results.items():
        if not name.endswith("errors)"):
            print(f"| {name} | {value:,.1f} |")
    print("targets (8b, H200): engine batch 1 >= 150; serve at 32 clients >= 2,300")
    print(json.dumps({k: v for k, v in results.items()}))


if __name__ == "__main__":
    main()
