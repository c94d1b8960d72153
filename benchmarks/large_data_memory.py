"""Peak memory of preparing a large training set: unitune's Arrow-backed path vs lists.

Data: a JSON array (the Alpaca-CoT file format) of N Alpaca records, made by cycling the
2,000-record sample of ../shared/data/instruct with a counter in each instruction, tokenized
with the real Llama-2 tokenizer (as in ``tokenize_throughput.py``), alpaca template,
max_length 512, packing on.

Baseline: what holding the data in memory costs (unitune's own list path, as every
in-memory pipeline does it): read every record into a list, encode them all into lists of
token ids, pack. Ours: ``build_datasets`` (records streamed into an Arrow table) +
``encode_records`` (batched ``datasets.map`` into a memory-mapped Arrow file) + ``Packed``
(rows assembled on access), exactly what ``unitune train`` runs.

Each side runs in its own process per size; prints wall time, peak resident memory (ru_maxrss:
it includes the interpreter, torch and the tokenizer, and the pages of memory-mapped Arrow
files that were read, which the kernel can drop at any time) and peak anonymous memory (RssAnon
sampled every 20 ms: what the process really holds), their ratios, and checks that both sides
give the same packed rows.

    python benchmarks/large_data_memory.py [--records 100000,400000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MAX_LENGTH = 512


def make_file(shared: Path, n: int, path: Path) -> None:
    sample = json.loads((shared / "instruct" / "alpaca_en_2k.json").read_text(encoding="utf-8"))
    sample = [r for r in sample if r["output"].strip()]
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            rec = dict(sample[i % len(sample)])
            rec["instruction"] = f"{rec['instruction']} (#{i})"
            f.write(("," if i else "") + json.dumps(rec, ensure_ascii=False) + "\n")
        f.write("]\n")


def anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, data: Path, shared: Path, work: Path) -> dict:
    from tokenize_throughput import llama2_tokenizer

    peak_anon = [anon_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], anon_mib())

    threading.Thread(target=sample, daemon=True).start()

    from unitune.data.encode import Packed, encode_conversations, encode_records
    from unitune.data.templates import get_template

    tokenizer = llama2_tokenizer(shared, work)
    template = get_template("alpaca")
    t0 = time.perf_counter()
    if mode == "lists":
        from unitune.data.readers import read_conversations

        convs = read_conversations(str(data))
        rows, report = encode_conversations(convs, tokenizer, template, MAX_LENGTH)
        packed = Packed(rows, MAX_LENGTH)
        packed_rows = list(packed)  # what a list pipeline hands the trainer
    else:
        from unitune.config import TrainConfig
        from unitune.data.sources import build_datasets

        cfg = TrainConfig(data=[str(data)], output_dir=str(work / "run"), packing=True,
                          max_length=MAX_LENGTH)
        train, _, _ = build_datasets(cfg, work / "tables", log=lambda *a: None)
        rows, report = encode_records(train, tokenizer, template, MAX_LENGTH, "assistant",
                                      False, work / "tables" / "train-encoded.arrow")
        packed = Packed(rows, MAX_LENGTH)
        packed_rows = packed
    n_tokens = sum(len(packed[g]["input_ids"]) for g in range(0, len(packed), 97))
    seconds = time.perf_counter() - t0
    done.set()
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "anon_mib": max(peak_anon[0], anon_mib()), "kept": report.kept,
            "packed_rows": len(packed_rows), "sampled_tokens": n_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="100000,400000", help="comma-separated sizes")
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--child", nargs=3, metavar=("MODE", "DATA", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    shared = Path(args.shared)
    if args.child:
        mode, data, work = args.child
        print(json.dumps(child(mode, Path(data), shared, Path(work))))
        return
    print("peak memory in MiB: RSS / anonymous")
    print(f"{'records':>9} {'file MiB':>9} | {'lists s':>7} {'lists peak':>14} | "
          f"{'arrow s':>7} {'arrow peak':>12} | ratio RSS / anonymous")
    for n in [int(x) for x in args.records.split(",")]:
        with tempfile.TemporaryDirectory(prefix="unitune-bench-") as tmp:
            data = Path(tmp) / "alpaca_big.json"
            make_file(shared, n, data)
            results = {}
            for mode in ("lists", "arrow"):
                work = Path(tmp) / mode
                work.mkdir()
                out = subprocess.run(
                    [sys.executable, __file__, "--shared", str(shared), "--child", mode,
                     str(data), str(work)], capture_output=True, text=True, check=True)
                results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            a, b = results["lists"], results["arrow"]
            same = all(a[k] == b[k] for k in ("kept", "packed_rows", "sampled_tokens"))
            print(f"{n:>9,} {data.stat().st_size / 2**20:>9.0f} | {a['seconds']:>7.1f} "
                  f"{a['peak_mib']:>6,.0f} / {a['anon_mib']:>5,.0f} | {b['seconds']:>7.1f} "
                  f"{b['peak_mib']:>5,.0f} / {b['anon_mib']:>4,.0f} | "
                  f"{a['peak_mib'] / b['peak_mib']:.1f}x / {a['anon_mib'] / b['anon_mib']:.1f}x "
                  f"less{'' if same else '  MISMATCH: different rows'}", flush=True)


if __name__ == "__main__":
    main()
