"""Tokenisation + loss masking throughput: unitune's encoder vs a per-example Python loop.

Data: the 2,000-record Alpaca sample (alpaca template) and the 500 ShareGPT conversations
(vicuna template) of ../shared/data/instruct, tokenized with the real Llama-2 SentencePiece
tokenizer of ../shared/data/tokenizers (converted to a fast tokenizer in a temporary folder).

Baseline: the straightforward per-example loop of the seed project (Alpaca-CoT's
``generate_and_tokenize_prompt``) and of FastChat's ``preprocess``: for each example, tokenize
the whole text, and find where each reply starts and ends by tokenizing the text before it and
the text through it (``len(tokenizer(prefix).input_ids)``), then mask by those lengths.
Ours: ``unitune.data.encode.encode_conversations``: render every conversation, one batched
fast-tokenizer call with offsets, labels from character spans.

Prints examples/s and tokens/s of both from the same run, their ratio, and in how many
examples the two loss masks differ (prefix lengths are off by one wherever a reply's first
token merges with the text before it, e.g. SentencePiece's leading "▁").

    python benchmarks/tokenize_throughput.py [--repeat 3] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unitune.data.encode import IGNORE, encode_conversations  # noqa: E402
from unitune.data.readers import read_conversations  # noqa: E402
from unitune.data.templates import get_template  # noqa: E402


def llama2_tokenizer(shared: Path, tmp: Path):
    from transformers import AutoTokenizer

    shutil.copy(shared / "tokenizers" / "llama2_sp.model", tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", '
        '"unk_token": "<unk>", "add_bos_token": true}')
    return AutoTokenizer.from_pretrained(str(tmp))


def baseline(convs, tokenizer, template, max_length: int) -> list[dict]:
    """Per example: tokenize the text, then each reply's prefixes to find its token range."""
    rows = []
    for conv in convs:
        text, spans = template.render(conv, tokenizer)
        ids = tokenizer(text)["input_ids"]
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            a = len(tokenizer(text[:start])["input_ids"])
            b = len(tokenizer(text[:end])["input_ids"])
            labels[a:b] = ids[a:b]
        rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return rows


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=2048)
    args = ap.parse_args()
    shared = Path(args.shared)
    instruct = shared / "instruct"
    datasets = [
        ("alpaca_en_2k", read_conversations(str(instruct / "alpaca_en_2k.json"),
                                            skip_invalid=True), get_template("alpaca")),
        ("sharegpt_500", read_conversations(str(instruct / "sharegpt_500.json")),
         get_template("vicuna")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = llama2_tokenizer(shared, Path(tmp))
        print(f"tokenizer: Llama-2 SentencePiece ({len(tokenizer)} pieces), "
              f"fast={tokenizer.is_fast}")
        total_base = total_ours = 0.0
        n_examples = n_tokens = 0
        for name, convs, template in datasets:
            t_base, base_rows = timed(lambda c=convs, t=template: baseline(
                c, tokenizer, t, args.max_length), args.repeat)
            t_ours, (our_rows, _) = timed(lambda c=convs, t=template: encode_conversations(
                c, tokenizer, t, args.max_length), args.repeat)
            tokens = sum(len(r["input_ids"]) for r in our_rows)
            differ = sum(a["labels"] != b["labels"]
                         for a, b in zip(base_rows, our_rows, strict=True))
            print(f"{name:<14} {len(convs):>5} examples {tokens:>8,} tokens | baseline "
                  f"{len(convs) / t_base:>9,.0f} ex/s | unitune {len(convs) / t_ours:>9,.0f} ex/s "
                  f"| x{t_base / t_ours:.1f} | masks differ in {differ} examples")
            total_base += t_base
            total_ours += t_ours
            n_examples += len(convs)
            n_tokens += tokens
    print(f"{'total':<14} {n_examples:>5} examples {n_tokens:>8,} tokens | baseline "
          f"{n_tokens / total_base:>9,.0f} tok/s | unitune {n_tokens / total_ours:>9,.0f} tok/s "
          f"| ratio x{total_base / total_ours:.1f}")


if __name__ == "__main__":
    main()
