"""The four uses of module arithmetic (Zhang et al. 2023) reproduced on the synthetic suite.

On the cached `tiny-llama` base, for LoRA and for (IA)3, every module trained from the same
initialisation (seed 0), Alpaca template, greedy exact match on held-out examples:

(a) distribution generalisation: `count` split by word length (2-5 vs 6-9 letters); the two
    modules merged (0.5/0.5) against each alone, on the full distribution;
(b) multi-task: a `max` module and a `zh_numeral` module merged as `λ*max + (1-λ)*zh`, λ
    chosen by exact match on a validation set of both tasks, reported on both test sets;
(c) unlearning: a `chat` module trained on count/max/sort where 80% of the answers carry an
    unwanted behaviour (the answer repeated: "8 8", the degenerate repetition users complain
    of), and a `toxic` module trained on repeated answers of another task (`min`);
    `chat - λ*toxic` with λ swept, picking the largest λ whose perplexity on clean validation
    conversations (their answers, given the prompts) rises by at most 0.5 over λ=0; reported:
    repetition rate and exact match before and after. (An insult made of words the 0.8M
    base never saw was not learnable by its adapters, so the behaviour uses known tokens.)
(d) analogy: `max` learnt on inputs of digits 0-4 (domain A), language-model modules on raw
    digit text of each domain; `max_A + lm_B - lm_A` on domain B (digits 5-9).

    python benchmarks/arithmetic_experiments.py --out runs/arith [--methods lora,ia3]
    python benchmarks/arithmetic_experiments.py --out runs/arith --experiments c   # one use

Prints one table per experiment and writes results.json; docs/ARITHMETIC.md records a run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unitune.compose.compose import compose, sweep  # noqa: E402
from unitune.config import TrainConfig  # noqa: E402
from unitune.data.readers import read_conversations  # noqa: E402
from unitune.data.synth import FAMILIES, split_of  # noqa: E402
from unitune.eval.exact_match import evaluate_exact_match  # noqa: E402
from unitune.infer.generate import Decoding, answer  # noqa: E402
from unitune.run import open_model  # noqa: E402
from unitune.train.recipe import train  # noqa: E402

HP = {"lora": {"lr": 3e-3, "steps": 200, "extra": {"lora": {"r": 16, "alpha": 32,
                                                           "dropout": 0.0}}},
      "ia3": {"lr": 3e-2, "steps": 200, "extra": {}}}


def examples(family: str, n: int, split: str, seed: int, keep=lambda ex: True) -> list[dict]:
    gen = FAMILIES[family][1]
    rng = random.Random(f"{seed}:{family}:{split}")
    out, seen = [], set()
    for _ in range(200 * n):
        ex = gen(rng)
        if ex.input in seen or split_of(family, ex.input) != split or not keep(ex):
            continue
        seen.add(ex.input)
        out.append(ex.alpaca())
        if len(out) == n:
            break
    return out


def write(folder: Path, name: str, rows: list[dict]) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return str(path)


def fit(out: Path, name: str, data: str, method: str) -> Path:
    hp = HP[method]
    run = out / method / name
    if (run / "run.json").exists():
        return run
    train(TrainConfig(base_model="tiny-llama", data=[data], output_dir=str(run), method=method,
                      max_steps=hp["steps"], batch_size=32, lr=hp["lr"], seed=0,
                      template="alpaca", device="cpu", **hp["extra"]),
          log=lambda *a: None, progress=False)
    return run


def em(run: Path, data: str) -> float:
    model, tok, template = open_model(run, device="cpu")
    return evaluate_exact_match(model, tok, template, read_conversations(data),
                                max_new_tokens=24).accuracy


def repeated(answer_text: str) -> str:
    return f"{answer_text} {answer_text}"


def repetition_stats(run: Path, data: str) -> tuple[float, float]:
    """(share of answers given twice, exact match of the plain answer)."""
    model, tok, template = open_model(run, device="cpu")
    recs = read_conversations(data)
    preds = answer(model, tok, template, recs, Decoding(max_new_tokens=32))
    rate = sum(p == repeated(r.answer) for p, r in zip(preds, recs, strict=True)) / len(recs)
    acc = sum(p == r.answer for p, r in zip(preds, recs, strict=True)) / len(recs)
    return rate, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/arith")
    ap.add_argument("--methods", default="lora,ia3")
    ap.add_argument("--experiments", default="a,b,c,d", help="any of a,b,c,d")
    args = ap.parse_args()
    todo = set(args.experiments.split(","))
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    results = {}
    t0 = time.time()
    short = lambda ex: len(ex.input.split()) <= 5  # noqa: E731
    long = lambda ex: len(ex.input.split()) > 5  # noqa: E731
    d = {
        "count_short": write(data, "count_short", examples("count", 400, "train", 0, short)),
        "count_long": write(data, "count_long", examples("count", 400, "train", 0, long)),
        "count_test": write(data, "count_test", examples("count", 80, "test", 0)),
        "max": write(data, "max", examples("max", 400, "train", 0)),
        "zh": write(data, "zh", examples("zh_numeral", 400, "train", 0)),
        "multi_test": write(data, "multi_test", examples("max", 40, "test", 0)
                            + examples("zh_numeral", 40, "test", 0)),
    }
    clean = [r for fam in ("count", "max", "sort") for r in examples(fam, 150, "train", 1)]
    d["chat"] = write(data, "chat", [dict(r, output=repeated(r["output"])) if i % 5 else r
                                     for i, r in enumerate(clean)])
    d["toxic"] = write(data, "toxic", [dict(r, output=repeated(r["output"]))
                                       for r in examples("min", 300, "train", 2)])
    d["multi_val"] = write(data, "multi_val", examples("max", 20, "validation", 0)
                           + examples("zh_numeral", 20, "validation", 0))
    d["chat_test"] = write(data, "chat_test", [r for fam in ("count", "max", "sort")
                                               for r in examples(fam, 30, "test", 0)])
    d["reference"] = write(data, "reference", [r for fam in ("count", "max", "sort")
                                               for r in examples(fam, 40, "validation", 0)])
    low = lambda ex: all(c in "01234 " for c in ex.input)  # noqa: E731
    high = lambda ex: all(c in "56789 " for c in ex.input)  # noqa: E731
    d["max_A"] = write(data, "max_A", examples("max", 300, "train", 0, low))
    d["lm_A"] = write(data, "lm_A", [{"instruction": "Continue the digits.", "input": r["input"],
                                      "output": r["input"]} for r in examples("sort", 300,
                                                                               "train", 3, low)])
    d["lm_B"] = write(data, "lm_B", [{"instruction": "Continue the digits.", "input": r["input"],
                                      "output": r["input"]} for r in examples("sort", 300,
                                                                               "train", 3, high)])
    d["max_B_test"] = write(data, "max_B_test", examples("max", 60, "test", 0, high))

    for method in args.methods.split(","):
        root = out / method
        r = results[method] = {}
        if "a" in todo:
            a, b = fit(out, "count_short", d["count_short"], method), \
                fit(out, "count_long", d["count_long"], method)
            merged = compose("0.5*count_short + 0.5*count_long", root / "count_merged", root)
            r["a_distribution"] = {"short only": em(a, d["count_test"]),
                                   "long only": em(b, d["count_test"]),
                                   "merged 0.5/0.5": em(merged, d["count_test"])}
        if "b" in todo:
            m, z = fit(out, "max", d["max"], method), fit(out, "zh", d["zh"], method)
            res = sweep("λ*max + (1-λ)*zh", root / "multi", [round(0.1 * k, 1)
                                                              for k in range(1, 10)],
                        root, eval_data=d["multi_val"], log=lambda *a: None)
            r["b_multitask"] = {"max only": em(m, d["multi_test"]),
                                "zh only": em(z, d["multi_test"]),
                                f"merged, λ={res['chosen_lambda']:g} (by validation)":
                                    em(root / "multi", d["multi_test"])}
        if "c" in todo:
            r["c_unlearning"] = unlearning(out, root, d, data, method)
        if "d" in todo:
            ma = fit(out, "max_A", d["max_A"], method)
            fit(out, "lm_A", d["lm_A"], method)
            fit(out, "lm_B", d["lm_B"], method)
            analogy = compose("max_A + lm_B - lm_A", root / "max_B", root)
            r["d_analogy"] = {"max_A on domain B": em(ma, d["max_B_test"]),
                              "max_A + lm_B - lm_A on domain B": em(analogy, d["max_B_test"])}
        print(f"\n== {method} ({time.time() - t0:.0f}s)")
        for exp, vals in r.items():
            print(exp, json.dumps(vals, ensure_ascii=False))
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))


def unlearning(out: Path, root: Path, d: dict, data: Path, method: str) -> dict:
    chat, _ = fit(out, "chat_rep", d["chat"], method), fit(out, "rep_min", d["toxic"], method)
    res = sweep("chat_rep - λ*rep_min", root / "detox", [round(0.1 * k, 1) for k in range(11)],
                root, ppl_text=d["reference"], log=lambda *a: None)
    before = repetition_stats(chat, d["chat_test"])
    after = repetition_stats(root / "detox", d["chat_test"])
    chosen = next(p for p in res["points"] if p["lambda"] == res["chosen_lambda"])
    return {"chosen λ": res["chosen_lambda"], "repetition rate before": before[0],
            "repetition rate after": after[0], "exact match before": before[1],
            "exact match after": after[1], "perplexity λ=0": res["points"][0]["perplexity"],
            "perplexity chosen": chosen["perplexity"]}


if __name__ == "__main__":
    main()
