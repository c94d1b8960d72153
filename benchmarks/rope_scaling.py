"""Long context by RoPE scaling: a small Llama pre-trained at a short context, then scored at
four times that context with no scaling, linear interpolation, dynamic NTK and YaRN (no
training), and after a short fine-tune at the long context with linear and YaRN scaling.

Everything goes through the CLI as a user would run it: `unitune train stage=pt`,
`rope_scaling=...` and `unitune eval --perplexity --rope`. The text is the English answers of
`../shared/data/instruct/alpaca_en_2k.json`, joined into documents; the last 10% are held out.

    python benchmarks/rope_scaling.py --out runs/rope            # prints the Markdown table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNITUNE = [sys.executable, "-c", "from unitune.cli import main; raise SystemExit(main())"]


def run(*args: str) -> str:
    out = subprocess.run([*UNITUNE, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"unitune {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def documents(source: Path, chars: int = 4000) -> list[str]:
    texts = [r["output"].strip() for r in json.loads(source.read_text()) if r["output"].strip()]
    docs, current = [], ""
    for text in texts:
        current += ("\n\n" if current else "") + text
        if len(current) >= chars:
            docs.append(current)
            current = ""
    return docs


def base_model(folder: Path, context: int) -> None:
    """A small random Llama with the tiny preset's tokenizer and ``context`` positions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.models.tiny import ensure_preset

    preset = ensure_preset("tiny-llama", log=lambda *a: None, progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(preset))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=context,
                                 tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                     ).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def perplexity(model: Path, data: Path, window: int, rope: str | None = None) -> float:
    args = ["eval", str(model), "--perplexity", str(data), "--window", str(window),
            "--stride", str(window), "--device", "cpu"]
    return json.loads(run(*args, *(["--rope", rope] if rope else [])))["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rope")
    parser.add_argument("--context", type=int, default=64, help="the pre-training context")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400, help="pre-training steps")
    parser.add_argument("--tune-steps", type=int, default=40, help="long-context fine-tune")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = documents(ROOT.parent / "shared" / "data" / "instruct" / "alpaca_en_2k.json")
    held = max(1, len(docs) // 10)
    for name, rows in (("train", docs[:-held]), ("heldout", docs[-held:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in rows))
    short, long = args.context, args.context * args.factor
    if not (out / "base" / "config.json").exists():
        base_model(out / "base", short)
    common = ["stage=pt", "method=full", f"data={out / 'train.jsonl'}", "batch_size=16",
              "lr=2e-3", "lr_scheduler=cosine", "warmup=0.05", "--device", "cpu",
              "--no-progress", "--overwrite"]
    if not (out / "pt" / "run.json").exists():
        run("train", f"base_model={out / 'base'}", f"max_length={short}",
            f"max_steps={args.steps}", "-o", str(out / "pt"), *common)
    heldout = out / "heldout.jsonl"
    rows = [(f"pre-trained at {short}, no scaling", perplexity(out / "pt", heldout, short),
             perplexity(out / "pt", heldout, long))]
    for kind in ("linear", "dynamic", "yarn"):
        rope = f"{kind}:{args.factor}"
        rows.append((f"+ {kind} x{args.factor}, no training", None,
                     perplexity(out / "pt", heldout, long, rope)))
    for kind in ("linear", "yarn"):
        tuned = out / f"tuned_{kind}"
        if not (tuned / "run.json").exists():
            run("train", f"base_model={out / 'pt'}", f"max_length={long}",
                f"max_steps={args.tune_steps}", f"rope_scaling.type={kind}",
                f"rope_scaling.factor={args.factor}", "-o", str(tuned), *common)
        rows.append((f"+ {kind} x{args.factor}, {args.tune_steps} steps at {long}",
                     perplexity(tuned, heldout, short), perplexity(tuned, heldout, long)))
    print(f"| model | perplexity at {short} | at {long} ({args.factor}x) |\n|---|---|---|")
    for name, at_short, at_long in rows:
        print(f"| {name} | {'-' if at_short is None else f'{at_short:.2f}'} | {at_long:.2f} |")


if __name__ == "__main__":
    main()
