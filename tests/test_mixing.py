from pathlib import Path

import pytest

from unitune.data.mixing import Source, dedupe, mix, split
from unitune.data.schema import Conversation, Turn
from unitune.errors import UserError


def recs(name: str, n: int) -> list[Conversation]:
    return [Conversation.single(f"{name} question {i}", f"{name} answer {i}", source=name,
                                line=i + 1) for i in range(n)]


def origin(conv: Conversation) -> str:
    return conv.source


def test_source_validation():
    with pytest.raises(UserError, match="not both"):
        Source("a", recs("a", 3), weight=1.0, count=2)
    with pytest.raises(UserError, match="weight must be"):
        Source("a", recs("a", 3), weight=-1.0)
    with pytest.raises(UserError, match="count must be"):
        Source("a", recs("a", 3), count=-1)
    with pytest.raises(UserError, match="count must be"):
        Source("a", recs("a", 3), count=2.5)
    with pytest.raises(UserError, match="unique"):
        mix([Source("a", recs("a", 2)), Source("a", recs("a", 2))], seed=0)
    with pytest.raises(UserError, match="empty"):
        mix([Source("a", [], count=3)], seed=0)


def test_fixed_counts_exact_without_replacement():
    a, b = recs("a", 50), recs("b", 20)
    out, report = mix([Source("a", a, count=10), Source("b", b, count=20)], seed=1)
    assert len(out) == 30
    assert sum(origin(c) == "a" for c in out) == 10
    assert sum(origin(c) == "b" for c in out) == 20
    # without replacement: all distinct, and b (count == size) is taken whole
    assert len({id(c) for c in out}) == 30
    assert {id(c) for c in out if origin(c) == "b"} == {id(c) for c in b}
    assert report == {"a": {"available": 50, "taken": 10, "repeated": False},
                      "b": {"available": 20, "taken": 20, "repeated": False}}


def test_count_above_size_repeats_and_says_so():
    a = recs("a", 4)
    out, report = mix([Source("a", a, count=10)], seed=3)
    assert len(out) == 10
    assert report["a"] == {"available": 4, "taken": 10, "repeated": True}
    counts = sorted(sum(c is r for c in out) for r in a)
    assert counts == [2, 2, 3, 3]  # the shuffled list repeated: 4 + 4 + 2


def test_relative_weights_without_total():
    out, report = mix([Source("a", recs("a", 10), weight=1.0),
                       Source("b", recs("b", 10), weight=0.5),
                       Source("c", recs("c", 10), weight=2.0),
                       Source("d", recs("d", 7))], seed=0)
    assert [report[n]["taken"] for n in "abcd"] == [10, 5, 20, 7]
    assert [report[n]["repeated"] for n in "abcd"] == [False, False, True, False]
    assert len(out) == 42
    assert sum(origin(c) == "c" for c in out) == 20


def test_weights_with_total():
    out, report = mix([Source("a", recs("a", 100), weight=3.0),
                       Source("b", recs("b", 100), weight=1.0),
                       Source("c", recs("c", 5), count=5)], seed=0, total=40)
    assert report["a"]["taken"] == 30 and report["b"]["taken"] == 10
    assert report["c"]["taken"] == 5
    assert len(out) == 45
    with pytest.raises(UserError, match="total"):
        mix([Source("a", recs("a", 3), count=1)], seed=0, total=10)


def test_mix_deterministic_and_seed_dependent():
    def run(seed):
        out, _ = mix([Source("a", recs("a", 30), count=12), Source("b", recs("b", 30),
                                                                    weight=0.5)], seed=seed)
        return [(c.source, c.line) for c in out]

    assert run(7) == run(7)
    assert run(7) != run(8)
    # shuffled across sources, not concatenated
    assert [s for s, _ in run(7)] != sorted(s for s, _ in run(7))


def test_adding_a_source_does_not_change_another_sources_sample():
    a = recs("a", 30)
    out1, _ = mix([Source("a", a, count=5)], seed=2)
    out2, _ = mix([Source("a", a, count=5), Source("b", recs("b", 9))], seed=2)
    assert {c.line for c in out1} == {c.line for c in out2 if c.source == "a"}


FLAN_MINI = Path(__file__).parent.parent / "examples" / "flan_mini.yaml"


def test_the_flan_mini_example_is_flacunas_recipe():
    from unitune.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, str(FLAN_MINI), [], {})
    counts = {Path(d.path).stem: d.count for d in cfg.data}
    assert sum(counts.values()) == 1_340_000
    assert counts["flan2021"] == 388_000 and counts["p3"] == 320_000
    assert counts["gpt4_alpaca"] == 52_000 and counts["code_alpaca"] == 20_000
    assert counts["sharegpt"] == 60_000 and cfg.template == "vicuna"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.max_length == 1280
    assert cfg.batch_size * cfg.grad_accum == 128 and cfg.lr == 2e-5 and cfg.warmup == 3000

    # its counts, scaled down, over small collections: some smaller than their share (they
    # repeat), some bigger; each is taken exactly, in the recipe's proportions
    fake = {name: recs(name, 150) for name in counts}
    out, report = mix([Source(n, fake[n], count=c // 1000) for n, c in counts.items()], seed=0)
    assert len(out) == 1340
    for name, full in counts.items():
        n = sum(origin(c) == name for c in out)
        assert n == full // 1000 == report[name]["taken"]
        assert report[name]["repeated"] == (full // 1000 > 150)
    assert report["flan2021"]["repeated"] and not report["cot"]["repeated"]
def test_dedupe_counts_and_keeps_first():
    a = Conversation.single("q", "a", source="f", line=1)
    a_again = Conversation.single("q", "a", source="f", line=9)  # same content, other line
    other_sys = Conversation.single("q", "a", system="be brief", line=2)
    other_input = Conversation.single("q", "a", input="x", line=3)
    multi = Conversation((Turn("user", "q"), Turn("assistant", "a"), Turn("user", "more"),
                          Turn("assistant", "b")), line=4)
    kept, dropped = dedupe([a, other_sys, a_again, other_input, multi, multi, a])
    assert dropped == 3
    assert kept == [a, other_sys, other_input, multi]
    assert kept[0].line == 1
    assert dedupe([]) == ([], 0)


@pytest.mark.parametrize("n,fraction,expected_val", [
    (2, 0.1, 1), (3, 0.1, 1), (10, 0.1, 1), (10, 0.25, 2), (10, 0.5, 5), (3, 0.9, 2),
    (2, 0.99, 1), (1, 0.5, 0), (0, 0.5, 0), (10, 0.0, 0)])
def test_split_by_fraction_tiny_sets(n, fraction, expected_val):
    data = recs("a", n)
    train, val = split(data, fraction, seed=0)
    assert len(val) == expected_val
    assert len(train) == n - expected_val
    assert sorted(c.line for c in train + val) == list(range(1, n + 1))


@pytest.mark.parametrize("n,count", [(2, 1), (3, 1), (3, 2), (10, 0), (10, 3), (10, 9)])
def test_split_by_count(n, count):
    train, val = split(recs("a", n), count, seed=0)
    assert (len(train), len(val)) == (n - count, count)


@pytest.mark.parametrize("n,count", [(2, 2), (3, 5), (10, 10)])
def test_split_count_too_big_says_how_many_records(n, count):
    with pytest.raises(UserError, match=f"only {n} records"):
        split(recs("a", n), count, seed=0)


def test_split_rejects_bad_values():
    for bad in (-1, 1.0, 1.5, -0.1, True, "0.1"):
        with pytest.raises(UserError):
            split(recs("a", 10), bad, seed=0)


def test_split_deterministic_and_seeded():
    data = recs("a", 40)
    t1, v1 = split(data, 0.25, seed=5)
    t2, v2 = split(data, 0.25, seed=5)
    assert t1 == t2 and v1 == v2
    _, v3 = split(data, 0.25, seed=6)
    assert [c.line for c in v1] != [c.line for c in v3]
    assert not {c.line for c in t1} & {c.line for c in v1}
