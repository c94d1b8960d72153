import json

import pytest

from unitune.data.synth import (
    DEFAULT_FAMILIES,
    FAMILIES,
    add_steps,
    chinese_numeral,
    final_answer,
    generate,
    write_suite,
)
from unitune.errors import UserError


def test_same_seed_gives_identical_files(tmp_path):
    a = write_suite(tmp_path / "a", list(DEFAULT_FAMILIES), 20, 5, 5, 10, seed=3)
    b = write_suite(tmp_path / "b", list(DEFAULT_FAMILIES), 20, 5, 5, 10, seed=3)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name


def test_different_seed_gives_different_data(tmp_path):
    a = write_suite(tmp_path / "a", ["sort"], 20, 0, 0, 0, seed=1)
    b = write_suite(tmp_path / "b", ["sort"], 20, 0, 0, 0, seed=2)
    assert a["train"].read_bytes() != b["train"].read_bytes()


def test_test_inputs_never_appear_in_training_or_pretraining(tmp_path):
    paths = write_suite(tmp_path, list(FAMILIES), 50, 10, 10, 200, seed=0)
    rows = {n: json.loads(paths[n].read_text(encoding="utf-8")) for n in paths}
    held_out = {(r["family"], r["input"]) for r in rows["test"] + rows["validation"]}
    seen = {(r["family"], r["input"]) for r in rows["train"]}
    # the raw prompt contains the input text
    raw = {(r["family"], r["instruction"]) for r in rows["pretrain"]}
    assert held_out and not held_out & seen
    for fam, inp in held_out:
        # raw prompts are '<input> =' or '<keyword> <input> ='
        assert not any(f == fam and (p == f"{inp} =" or p.split(" ", 1)[1] == f"{inp} =")
                       for f, p in raw)


def test_every_family_answer_is_exact():
    sample = generate(list(FAMILIES), {"train": 30}, seed=0)["train"]
    by_family = {}
    for ex in sample:
        by_family.setdefault(ex.family, []).append(ex)
    assert set(by_family) == set(FAMILIES)
    for ex in by_family["sort"]:
        assert ex.output.split() == sorted(ex.input.split())
    for ex in by_family["max"]:
        assert ex.output == max(ex.input.split())
    for ex in by_family["min"]:
        assert ex.output == min(ex.input.split())
    for ex in by_family["count"]:
        assert int(ex.output) == len(ex.input.split())
    for ex in by_family["reverse"]:
        assert ex.output.split() == ex.input.split()[::-1]
    for ex in by_family["add"]:
        a, b = ex.input.split(" + ")
        assert int(ex.output) == int(a) + int(b)
    for ex in by_family["add_cot"]:
        a, b = ex.input.split(" + ")
        assert final_answer("add_cot", ex.output) == str(int(a) + int(b))


@pytest.mark.parametrize("n,text", [(0, "零"), (7, "七"), (10, "十"), (15, "十五"), (20, "二十"),
                                    (105, "一百零五"), (110, "一百一十"), (999, "九百九十九"),
                                    (1001, "一千零一"), (1010, "一千零一十"),
                                    (2300, "二千三百")])
def test_chinese_numerals(n, text):
    assert chinese_numeral(n) == text


def test_add_steps_show_carries():
    assert add_steps(58, 23) == "8 + 3 = 11, 5 + 2 + 1 = 8, so the answer is 81"


def test_unknown_family_is_a_user_error():
    with pytest.raises(UserError, match="did you mean 'sort'"):
        generate(["srot"], {"train": 1}, seed=0)
