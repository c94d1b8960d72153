"""The embedded synthetic instruction-task suite.

Owns the task families (each a named generator of ``(instruction, input, output)``
with an exact answer), their deterministic train/validation/test split, the plain-text
"pre-training" corpus that teaches a tiny base model the underlying skills in a raw format,
and writing all of it as Alpaca JSON.

Every family is separable by name so later stages (mixing, module arithmetic) can pick
task families individually. Splits are decided by a stable hash of ``(family, input)``, so an
input that lands in the test split never appears in train or in the pre-training corpus,
whatever seed or size is asked for.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unitune.errors import UserError, did_you_mean

_ZH_DIGITS = "零一二三四五六七八九"


def chinese_numeral(n: int) -> str:
    """Write 0 <= n <= 9999 in Chinese numerals (一百零五, 十五, 两 is not used)."""
    if not 0 <= n <= 9999:
        raise ValueError(f"chinese_numeral supports 0..9999, got {n}")
    if n == 0:
        return _ZH_DIGITS[0]
    units = ["千", "百", "十", ""]
    digits = [int(d) for d in f"{n:04d}"]
    out: list[str] = []
    pending_zero = False
    for digit, unit in zip(digits, units, strict=True):
        if digit == 0:
            pending_zero = bool(out)
            continue
        if pending_zero:
            out.append(_ZH_DIGITS[0])
            pending_zero = False
        out.append(_ZH_DIGITS[digit] + unit)
    text = "".join(out)
    return text[1:] if text.startswith("一十") else text


def _spaced(chars: str | list) -> str:
    return " ".join(str(c) for c in chars)


@dataclass(frozen=True)
class Example:
    """One synthetic example: a family name, the Alpaca fields and the raw (pre-training) prompt.

    The raw form is terse (``count c a t =``) and is what the tiny base is pre-trained on; the
    Alpaca form (natural-language instruction + input) is what instruction tuning teaches.
    """

    family: str
    instruction: str
    input: str
    output: str
    raw_prompt: str

    def alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output,
                "family": self.family}


Generator = Callable[[random.Random], Example]


def _reverse(rng: random.Random) -> Example:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 4)))
    src, out = _spaced(word), _spaced(word[::-1])
    return Example("reverse", "Reverse the order of the letters.", src, out,
                   f"reverse {src} =")


def _upper(rng: random.Random) -> Example:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))
    src, out = _spaced(word), _spaced(word.upper())
    return Example("upper", "Write the letters in upper case.", src, out,
                   f"upper {src} =")


def _last(rng: random.Random) -> Example:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    src = _spaced(word)
    return Example("last", "What is the last letter?", src, word[-1], f"last {src} =")


def _max(rng: random.Random) -> Example:
    nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
    src = _spaced(nums)
    return Example("max", "Find the largest number.", src, str(max(nums)),
                   f"max {src} =")


def _min(rng: random.Random) -> Example:
    nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
    src = _spaced(nums)
    return Example("min", "Find the smallest number.", src, str(min(nums)),
                   f"min {src} =")


def _sort(rng: random.Random) -> Example:
    nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 4))]
    src, out = _spaced(nums), _spaced(sorted(nums))
    return Example("sort", "Sort the numbers in ascending order.", src, out,
                   f"sort {src} =")


def _add_operands(rng: random.Random) -> tuple[int, int]:
    return rng.randint(0, 99), rng.randint(0, 99)


def _add(rng: random.Random) -> Example:
    a, b = _add_operands(rng)
    src = f"{a} + {b}"
    return Example("add", "Add the two numbers.", src, str(a + b), f"{src} =")


def add_steps(a: int, b: int) -> str:
    """Column addition written out digit by digit, ending with 'so the answer is N'."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        lhs = f"{x} + {y}" + (f" + {carry}" if carry else "")
        steps.append(f"{lhs} = {total}")
        carry = total // 10
    return ", ".join(steps) + f", so the answer is {a + b}"


def _add_cot(rng: random.Random) -> Example:
    a, b = _add_operands(rng)
    src = f"{a} + {b}"
    return Example("add_cot", "Add the two numbers. Think step by step.", src, add_steps(a, b),
                   f"{src} =")


def _count(rng: random.Random) -> Example:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
    src = _spaced(word)
    return Example("count", "Count the letters.", src, str(len(word)),
                   f"count {src} =")


def _zh_numeral(rng: random.Random) -> Example:
    n = rng.randint(1, 999)
    return Example("zh_numeral", "把阿拉伯数字写成中文数字。", str(n), chinese_numeral(n),
                   f"{n} =")


FAMILIES: dict[str, tuple[str, Generator]] = {
    "reverse": ("en", _reverse),
    "upper": ("en", _upper),
    "last": ("en", _last),
    "max": ("en", _max),
    "min": ("en", _min),
    "sort": ("en", _sort),
    "add": ("en", _add),
    "add_cot": ("en", _add_cot),
    "count": ("en", _count),
    "zh_numeral": ("zh", _zh_numeral),
}
DEFAULT_FAMILIES = ("count", "max", "sort", "zh_numeral")


def final_answer(family: str, output: str) -> str:
    """The part of an output that exact match compares: the whole answer, or for CoT the result."""
    text = output.strip()
    if family.endswith("_cot"):
        marker = "the answer is"
        return text.rsplit(marker, 1)[-1].strip() if marker in text else ""
    return text


def split_of(family: str, source: str) -> str:
    """The split an input belongs to, from a stable hash (independent of seed and sizes):
    validation and test take a tenth of the inputs each."""
    bucket = int(hashlib.sha256(f"{family}\0{source}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < 0.1:
        return "validation"
    if bucket < 0.2:
        return "test"
    return "train"


def check_families(names: list[str] | tuple[str, ...]) -> list[str]:
    for name in names:
        if name not in FAMILIES:
            raise UserError(f"unknown task family '{name}'{did_you_mean(name, FAMILIES)}; "
                            f"known: {', '.join(FAMILIES)}")
    return list(names)


def generate(families: list[str], counts: dict[str, int], seed: int,
             max_tries_factor: int = 50) -> dict[str, list[Example]]:
    """Draw unique examples per family and split: ``counts`` maps split -> examples per family.

    Deterministic in ``seed``. A family whose input space is too small for the request yields
    as many unique examples as exist (the caller sees the shortfall in the returned lengths).
    """
    check_families(families)
    result: dict[str, list[Example]] = {s: [] for s in counts}
    for family in families:
        _, gen = FAMILIES[family]
        rng = random.Random(f"{seed}:{family}")
        seen: set[str] = set()
        wanted = dict(counts)
        tries = 0
        budget = max_tries_factor * max(1, sum(wanted.values()))
        while any(v > 0 for v in wanted.values()) and tries < budget:
            tries += 1
            ex = gen(rng)
            if ex.input in seen:
                continue
            split = split_of(family, ex.input)
            if wanted.get(split, 0) <= 0:
                continue
            seen.add(ex.input)
            wanted[split] -= 1
            result[split].append(ex)
    for split in result:
        random.Random(f"{seed}:shuffle:{split}").shuffle(result[split])
    return result


def _wrong(ex: Example, rng: random.Random) -> str:
    """A plausible wrong answer: a number off by a little, a list out of order, a word with
    two letters swapped."""
    out = ex.output
    if ex.family == "zh_numeral":
        n = int(ex.input)
        return chinese_numeral(max(0, n + rng.choice([-10, -1, 1, 10])) or n + 1)
    if ex.family in ("count", "max", "min", "add"):
        n = int(out)
        return str(max(0, n + rng.choice([-2, -1, 1, 2])) if n else n + 1)
    parts = out.split(" ")
    if len(set(parts)) > 1:
        while True:
            shuffled = parts[:]
            rng.shuffle(shuffled)
            if shuffled != parts:
                return " ".join(shuffled)
    return out + " " + out  # (nothing to reorder: say it twice)


def _verbose(ex: Example) -> str:
    """The right answer, wrapped in words an exact answer does not have."""
    if FAMILIES[ex.family][0] == "zh":
        return f"好的！答案是：{ex.output}。希望对你有帮助。"
    return f"Sure! Here is the answer: {ex.output}. I hope this helps."


def preference_pairs(examples: list[Example], seed: int) -> list[dict]:
    """Preference pairs whose preference is checkable: the chosen answer is the exact answer;
    the rejected one is wrong, or right but wordy (the preference: correct and short)."""
    rng = random.Random(f"{seed}:preference")
    pairs = []
    for ex in examples:
        rejected = _verbose(ex) if rng.random() < 0.3 else _wrong(ex, rng)
        pairs.append({"instruction": ex.instruction, "input": ex.input, "chosen": ex.output,
                      "rejected": rejected, "family": ex.family})
    return pairs


def write_suite(out_dir: Path, families: list[str], n_train: int, n_val: int, n_test: int,
                n_pretrain: int, seed: int) -> dict[str, Path]:
    """Write train/validation/test Alpaca JSON files, preference pairs on the train and
    validation inputs (``preference_train.json``, ``preference_validation.json``), and a
    pre-training text corpus.

    The pre-training corpus (``pretrain.json``, for the ``raw`` template) holds the raw form
    (``count c a t =`` -> ``3``) of training-split inputs only, never validation or test inputs.
    Returns the paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    suite = generate(families, {"train": n_train + n_pretrain, "validation": n_val,
                                "test": n_test}, seed)
    # the first n_train training examples per family are the instruction data; all training
    # inputs (those and the rest) feed the raw pre-training corpus.
    per_family: dict[str, list[Example]] = {}
    for ex in suite["train"]:
        per_family.setdefault(ex.family, []).append(ex)
    train = [ex for fam in families for ex in per_family.get(fam, [])[:n_train]]
    random.Random(f"{seed}:shuffle:sft").shuffle(train)
    paths = {}
    for split, rows in (("train", train), ("validation", suite["validation"]),
                        ("test", suite["test"])):
        path = out_dir / f"{split}.json"
        path.write_text(json.dumps([ex.alpaca() for ex in rows], ensure_ascii=False, indent=1),
                        encoding="utf-8")
        paths[split] = path
    for split, rows in (("train", train), ("validation", suite["validation"])):
        path = out_dir / f"preference_{split}.json"
        path.write_text(json.dumps(preference_pairs(rows, seed), ensure_ascii=False, indent=1),
                        encoding="utf-8")
        paths[f"preference_{split}"] = path
    corpus = out_dir / "pretrain.json"
    rows = [{"instruction": ex.raw_prompt, "input": "", "output": ex.output, "family": ex.family}
            for ex in suite["train"]]
    corpus.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    paths["pretrain"] = corpus
    meta = {"families": families, "seed": seed, "sizes": {k: len(v) for k, v in
            (("train", train), ("validation", suite["validation"]), ("test", suite["test"]))},
            "pretrain_lines": len(suite["train"])}
    (out_dir / "suite.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return paths
