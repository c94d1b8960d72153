"""The four uses of module arithmetic (Zhang et al. 2023) on the synthetic suite, with λ tuned
on validation, controls, three seeds and confidence intervals; regenerates the results
section of docs/ARITHMETIC.md from its results file.

On the cached `tiny-llama` base, for LoRA and for (IA)3; per seed, every module of a method
trains from one shared initialisation (that seed), on data drawn with that seed; exact match
is greedy on held-out examples. Expressions are the paper's normalised forms, λ is chosen on
a validation split (steps of 0.02; 0.1 for unlearning, as in the paper's appendix), and every
use has a base-model row, single-module rows and a scaling control (the single module scaled
by its own λ tuned on the same validation set, so a gain from merely shrinking a module is
not credited to the arithmetic):

(a) distribution generalisation: `count` split by word length (2-5 vs 6-9 letters);
    `λ*short + (1-λ)*long` on the full length range;
(b) multi-task: a `max` and a `zh_numeral` module, `λ*max + (1-λ)*zh` on both test sets;
(c) unlearning: a `chat` module trained on count/max/sort where 80% of the answers carry an
    unwanted behaviour (the answer said twice, "8 8") and a `rep` module trained on repeated
    answers of another task (`min`); `chat - λ*rep`, λ the largest whose perplexity on clean
    validation replies rises by at most 0.5 over λ=0; control `(1-λ)*chat` by the same rule;
(d) analogy: `max` learnt on digits 0-4 (domain A), language-model modules on raw digit text of
    each domain; `λ*max_A + (1-λ)*(lm_B - lm_A)` on domain B (digits 5-9); also the
    unnormalised `max_A + lm_B - lm_A`.

    python benchmarks/arithmetic_experiments.py --out runs/arith --docs docs/ARITHMETIC.md
    python benchmarks/arithmetic_experiments.py --out runs/arith --experiments c --seeds 0

Resumable: finished (method, use, seed) cells are kept in results.json and skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
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

BASE = "tiny-llama"
HP = {"lora": {"lr": 3e-3, "steps": 200, "extra": {"lora": {"r": 16, "alpha": 32,
                                                           "dropout": 0.0}}},
      "ia3": {"lr": 3e-2, "steps": 200, "extra": {}}}
FINE = [round(0.02 * k, 2) for k in range(51)]
COARSE = [round(0.1 * k, 1) for k in range(11)]
USES = {"a": "distribution generalisation", "b": "multi-task", "c": "unlearning",
        "d": "analogy"}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t, two-sided 95%
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


def examples(family: str, n: int, split: str, seed: int, keep=lambda ex: True) -> list[dict]:
    gen = FAMILIES[family][1]
    rng = random.Random(f"{seed}:{family}:{split}")
    out, seen = [], set()
    for _ in range(400 * n):
        ex = gen(rng)
        if ex.input in seen or split_of(family, ex.input) != split or not keep(ex):
            continue
        seen.add(ex.input)
        out.append(ex.alpaca())
        if len(out) == n:
            break
    return out


def repeated(answer_text: str) -> str:
    return f"{answer_text} {answer_text}"


def lm_rows(rows: list[dict]) -> list[dict]:
    return [{"instruction": "Continue the digits.", "input": r["input"], "output": r["input"]}
            for r in rows]


def make_data(folder: Path, seed: int) -> dict[str, str]:
    """Every data file of one seed (training data drawn with the seed; held-out sets too)."""
    folder.mkdir(parents=True, exist_ok=True)
    short = lambda ex: len(ex.input.split()) <= 5  # noqa: E731
    long = lambda ex: len(ex.input.split()) > 5  # noqa: E731
    low = lambda ex: all(c in "01234 " for c in ex.input)  # noqa: E731
    high = lambda ex: all(c in "56789 " for c in ex.input)  # noqa: E731
    clean = [r for fam in ("count", "max", "sort") for r in examples(fam, 150, "train", seed)]
    sets = {
        "count_short": examples("count", 400, "train", seed, short),
        "count_long": examples("count", 400, "train", seed, long),
        "count_val": examples("count", 200, "validation", seed),
        "count_test": examples("count", 400, "test", seed),
        "max": examples("max", 400, "train", seed),
        "zh": examples("zh_numeral", 400, "train", seed),
        "multi_val": examples("max", 100, "validation", seed)
        + examples("zh_numeral", 100, "validation", seed),
        "multi_test": examples("max", 200, "test", seed)
        + examples("zh_numeral", 200, "test", seed),
        "chat": [dict(r, output=repeated(r["output"])) if i % 5 else r
                 for i, r in enumerate(clean)],
        "rep": [dict(r, output=repeated(r["output"]))
                for r in examples("min", 300, "train", seed + 100)],
        "chat_reference": [r for fam in ("count", "max", "sort")
                           for r in examples(fam, 40, "validation", seed)],
        "chat_test": [r for fam in ("count", "max", "sort")
                      for r in examples(fam, 100, "test", seed)],
        "max_A": examples("max", 300, "train", seed, low),
        "lm_A": lm_rows(examples("sort", 300, "train", seed + 200, low)),
        "lm_B": lm_rows(examples("sort", 300, "train", seed + 200, high)),
        "max_B_val": examples("max", 200, "validation", seed, high),
        "max_B_test": examples("max", 400, "test", seed, high),
    }
    paths = {"sizes": {k: len(v) for k, v in sets.items()}}
    for name, rows in sets.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(rows, ensure_ascii=False))
        paths[name] = str(path)
    return paths


class Cell:
    """One (method, seed): trains its modules on demand and evaluates runs."""

    def __init__(self, out: Path, method: str, seed: int, data: dict[str, str]):
        self.root, self.method, self.seed, self.data = out / method / f"seed{seed}", method, \
            seed, data
        self.root.mkdir(parents=True, exist_ok=True)

    def module(self, name: str) -> Path:
        hp = HP[self.method]
        run = self.root / name
        if not (run / "run.json").exists():
            train(TrainConfig(base_model=BASE, data=[self.data[name]], output_dir=str(run),
                              method=self.method, max_steps=hp["steps"], batch_size=32,
                              lr=hp["lr"], seed=self.seed, template="alpaca", device="cpu",
                              overwrite=True, **hp["extra"]),
                  log=lambda *a: None, progress=False)
        return run

    def em(self, target: Path | str, data: str) -> float:
        model, tok, template = open_model(target, device="cpu", template="alpaca",
                                          log=lambda *a: None, progress=False)
        return evaluate_exact_match(model, tok, template, read_conversations(self.data[data]),
                                    max_new_tokens=24).accuracy

    def tuned(self, expression: str, name: str, val: str, lams=FINE, **kw) -> tuple[Path, dict]:
        out = self.root / name
        res = sweep(expression, out, {"λ": lams}, self.root,
                    eval_data=self.data[val] if val else None, overwrite=True,
                    log=lambda *a: None, **kw)
        return out, res


def merged_pair(c: Cell, a: str, b: str, labels: tuple[str, str, str], val: str, test: str,
                out: str) -> dict:
    """Two modules, each alone, the better one scaled by its own tuned λ (the control), and
    `λ*a + (1-λ)*b` with λ tuned on ``val``; all scored on ``test``. ``labels``: the rows'
    names of a, b and the merge."""
    first, second = c.module(a), c.module(b)
    rows = {"base model": c.em(BASE, test), f"{labels[0]} only": c.em(first, test),
            f"{labels[1]} only": c.em(second, test)}
    controls = [c.tuned(f"λ*{m}", f"control_{m}", val) for m in (a, b)]
    best = max(controls, key=lambda x: x[1]["points"][FINE.index(x[1]["chosen"]["λ"])][
        "exact_match"])
    rows["control: λ*(better module)"] = c.em(best[0], test)
    merged, res = c.tuned(f"λ*{a} + (1-λ)*{b}", out, val)
    name = labels[2]
    rows[name] = c.em(merged, test)
    return {"rows": rows, "λ": res["chosen"]["λ"], "control λ": best[1]["chosen"]["λ"],
            "effect": rows[name] - max(v for k, v in rows.items()
                                       if k not in ("base model", name))}


def distribution(c: Cell) -> dict:
    return merged_pair(c, "count_short", "count_long", ("short (2-5 letters)",
                       "long (6-9 letters)", "λ*short + (1-λ)*long"), "count_val", "count_test",
                       "merged")


def multitask(c: Cell) -> dict:
    return merged_pair(c, "max", "zh", ("max", "zh_numeral", "λ*max + (1-λ)*zh"), "multi_val",
                       "multi_test", "merged_multi")


def repetition(c: Cell, target: Path | str) -> tuple[float, float]:
    """(share of answers said twice, exact match of the plain answer) on clean test prompts."""
    model, tok, template = open_model(target, device="cpu", template="alpaca",
                                      log=lambda *a: None, progress=False)
    recs = read_conversations(c.data["chat_test"])
    preds = answer(model, tok, template, recs, Decoding(max_new_tokens=32))
    rate = sum(p == repeated(r.answer) for p, r in zip(preds, recs, strict=True)) / len(recs)
    acc = sum(p == r.answer for p, r in zip(preds, recs, strict=True)) / len(recs)
    return rate, acc


def unlearning(c: Cell) -> dict:
    chat, _ = c.module("chat"), c.module("rep")
    ppl = {"ppl_text": c.data["chat_reference"], "ppl_bound": 0.5}
    merged, res = c.tuned("chat - λ*rep", "detox", None, COARSE, **ppl)
    control, cres = c.tuned("chat - λ*chat", "control_detox", None, COARSE, **ppl)
    rows = {}
    for name, target in (("base model", BASE), ("chat module", chat),
                         ("control: (1-λ)*chat", control), ("chat - λ*rep", merged)):
        rate, acc = repetition(c, target)
        rows[f"{name}: repetition"] = rate
        rows[f"{name}: exact match"] = acc
    return {"rows": rows, "λ": res["chosen"]["λ"], "control λ": cres["chosen"]["λ"],
            "effect": min(rows["chat module: repetition"],
                          rows["control: (1-λ)*chat: repetition"])
            - rows["chat - λ*rep: repetition"]}


def analogy(c: Cell) -> dict:
    ma, _, _ = c.module("max_A"), c.module("lm_A"), c.module("lm_B")
    rows = {"base model": c.em(BASE, "max_B_test"), "max_A only": c.em(ma, "max_B_test")}
    control, cres = c.tuned("λ*max_A", "control_max_A", "max_B_val")
    rows["control: λ*max_A"] = c.em(control, "max_B_test")
    plain = compose("max_A + lm_B - lm_A", c.root / "analogy_plain", c.root, overwrite=True,
                    log=lambda *a: None)
    rows["max_A + lm_B - lm_A (unnormalised)"] = c.em(plain, "max_B_test")
    merged, res = c.tuned("λ*max_A + (1-λ)*(lm_B - lm_A)", "analogy", "max_B_val")
    rows["λ*max_A + (1-λ)*(lm_B - lm_A)"] = c.em(merged, "max_B_test")
    return {"rows": rows, "λ": res["chosen"]["λ"], "control λ": cres["chosen"]["λ"],
            "effect": rows["λ*max_A + (1-λ)*(lm_B - lm_A)"] - max(
                rows["max_A only"], rows["control: λ*max_A"])}


RUN_USE = {"a": distribution, "b": multitask, "c": unlearning, "d": analogy}


def interval(values: list[float]) -> str:
    """Mean ± the half-width of a 95% t-interval across seeds, in percent."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return f"{100 * mean:.1f} ± {100 * half:.1f}"


def render(results: dict, wall_s: float, seeds: list[int], sizes: dict) -> str:
    """The results section of docs/ARITHMETIC.md, from results.json alone."""
    held_out = {k: sorted({s[k] for s in sizes.values()}) for k in
                ("count_val", "count_test", "multi_val", "multi_test", "chat_reference",
                 "chat_test", "max_B_val", "max_B_test")}
    lines = [f"Generated by `python benchmarks/arithmetic_experiments.py --out runs/arith --docs "
             f"docs/ARITHMETIC.md` from its `results.json` (do not edit by hand). Seeds "
             f"{', '.join(map(str, seeds))}; cells are the mean over seeds ± the half-width of "
             "a 95% t-interval across seeds, in percent; λ is listed per seed. Wall time of "
             f"all cells: {wall_s / 60:.0f} minutes on the 2-core CPU dev machine. Held-out "
             "set sizes (validation / test): "
             + "; ".join(f"{k} {'-'.join(map(str, dict.fromkeys([v[0], v[-1]])))}"
                         for k, v in held_out.items()) + ".", ""]
    verdicts = []
    for key, title in USES.items():
        methods = [m for m in results if key in results[m]]
        if not methods:
            continue
        lines += [f"### ({key}) {title}", "",
                  "| row | " + " | ".join(("LoRA" if m == "lora" else "(IA)3")
                                        for m in methods) + " |",
                  "|---|" + "---|" * len(methods)]
        first = results[methods[0]][key]
        for row in next(iter(first.values()))["rows"]:
            cells = [interval([results[m][key][s]["rows"][row] for s in results[m][key]])
                     for m in methods]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        for label in ("λ", "control λ"):
            cells = [", ".join(f"{results[m][key][s][label]:g}" for s in results[m][key])
                     for m in methods]
            lines.append(f"| chosen {label} (per seed) | " + " | ".join(cells) + " |")
        cells, held = [], []
        for m in methods:
            effects = [results[m][key][s]["effect"] for s in results[m][key]]
            ok = len(effects) >= 3 and all(e > 0 for e in effects)
            half = T975.get(len(effects) - 1, 1.96) * statistics.stdev(effects) / \
                len(effects) ** 0.5 if len(effects) > 1 else float("inf")
            held.append((m, ok, statistics.fmean(effects) - half > 0))
            cells.append(f"{interval(effects)} ({sum(e > 0 for e in effects)}/{len(effects)} "
                         "seeds > 0)")
        lines += [f"| **effect** ({EFFECT[key]}) | " + " | ".join(cells) + " |", ""]
        for m, ok, clear in held:
            name = "LoRA" if m == "lora" else "(IA)3"
            verdicts.append(f"- ({key}) {title}, {name}: " + (
                "not reproduced (the effect is not positive in every seed)" if not ok else
                "**reproduced** (positive in every seed" + (
                    ", and the 95% interval of the mean excludes 0)" if clear else
                    "; small: the 95% interval of the mean still includes 0)")))
    return "\n".join(lines + ["**Verdicts.**", ""] + verdicts) + "\n"


EFFECT = {"a": "merged minus the best of the single modules and the control",
          "b": "merged minus the best of the single modules and the control",
          "c": "repetition of the better of chat and the control, minus the merged run's",
          "d": "merged minus the better of max_A and the control"}


def write_docs(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
    path.write_text(text[:start] + "\n" + section + text[end:], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/arith")
    ap.add_argument("--methods", default="lora,ia3")
    ap.add_argument("--experiments", default="a,b,c,d", help="any of a,b,c,d")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--docs", help="rewrite the results section of this Markdown file")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    results, wall = saved.get("results", {}), saved.get("wall_s", {})
    sizes = saved.get("sizes", {})
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    for seed in seeds:
        data = make_data(out / "data" / f"seed{seed}", seed)
        sizes[str(seed)] = data.pop("sizes")
        for method in args.methods.split(","):
            cell = Cell(out, method, seed, data)
            for key in args.experiments.split(","):
                done = results.setdefault(method, {}).setdefault(key, {})
                if str(seed) in done:
                    continue
                start = time.time()
                done[str(seed)] = RUN_USE[key](cell)
                wall[f"{method}/{key}/{seed}"] = time.time() - start
                print(f"[{time.time() - t0:.0f}s] {method} ({key}) seed {seed}: "
                      f"{json.dumps(done[str(seed)], ensure_ascii=False)}", flush=True)
                store.write_text(json.dumps({"results": results, "wall_s": wall,
                                             "sizes": sizes}, indent=1, ensure_ascii=False))
    store.write_text(json.dumps({"results": results, "wall_s": wall, "sizes": sizes}, indent=1,
                                ensure_ascii=False))
    section = render(results, sum(wall.values()), seeds, sizes)
    print(section)
    if args.docs:
        write_docs(Path(args.docs), section)


if __name__ == "__main__":
    main()
