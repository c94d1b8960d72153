"""Data of any size: JSON arrays streamed in windows, records and encoded rows on Arrow.

Every Arrow-backed step must give exactly what the in-memory list path gives, and preparing a
training set must not hold its records or rows in memory.
"""

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from unitune.config import TrainConfig
from unitune.data import store
from unitune.data.augment import iter_augment
from unitune.data.encode import Packed, encode_conversations, encode_records
from unitune.data.mixing import Source, dedupe, mix, split
from unitune.data.readers import _iter_json_array, iter_objects, read_conversations
from unitune.data.schema import Conversation, Turn
from unitune.data.sources import build_datasets
from unitune.data.templates import get_template
from unitune.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(test_preset):
    from unitune.models.loading import load_tokenizer

    return load_tokenizer(str(test_preset))


def stream(raw: bytes, chunk: int):
    try:
        return list(_iter_json_array(io.BytesIO(raw), Path("f.json"), chunk))
    except UserError as e:
        return str(e)


@pytest.mark.parametrize("name", ["sharegpt_500.json", "alpaca_zh_1k.json",
                                  "dpo_en_demo.json"])
def test_json_array_windows_give_the_same_records_and_lines(shared_data, name):
    """Records split across reading windows (also inside multi-byte UTF-8 characters) come
    out whole, with the line they start on."""
    raw = (shared_data / "instruct" / name).read_bytes()
    whole = stream(raw, 1 << 30)
    assert isinstance(whole, list) and len(whole) >= 300
    lines = raw.decode("utf-8-sig").split("\n")
    for line, _ in whole[:20]:
        assert lines[line - 1].lstrip().startswith(("{", "[{")), (line, lines[line - 1][:40])
    for chunk in (5, 333, 4096):
        assert stream(raw, chunk) == whole


@pytest.mark.parametrize(("raw", "expected"), [
    (b'[\n{"a": 1},\n{"b": 2},\n]', "f.json:3: invalid JSON: trailing comma before ']'"),
    (b'[\n{"a": 1,\n "b": 2,}\n]', "f.json:3: invalid JSON: trailing comma before '}'"),
    (b'[\n{"a": 1}\n{"b": 2}]', "f.json:3: invalid JSON: expected ',' or ']' between records"),
    (b'[\n  {"a": 1},\n  {"b": 2 "c": 3}]', "f.json:3:11: invalid JSON: Expecting ','"),
    (b'[\n{"a": "x"},\n{"b": "unterminated}]', "f.json:3:7: invalid JSON: Unterminated string"),
    (b'[\n{"a": 1},\n', "f.json:3: unexpected end of file inside the JSON array"),
    (b'[\n{"a": 1},\n{"b": "\xff"}]', "f.json:3: not valid UTF-8"),
])
def test_json_array_errors_name_the_same_line_whatever_the_window(raw, expected):
    for chunk in (1, 4, 16, 1 << 20):
        assert stream(raw, chunk).startswith(expected), (chunk, stream(raw, chunk))


def test_a_json_array_file_is_read_in_windows(tmp_path):
    """iter_objects reads a big array without loading it: it works through a window of a
    few MiB whatever the file's size."""
    path = tmp_path / "big.json"
    records = [{"instruction": f"q{i}", "output": "x" * (i % 700)} for i in range(48_000)]
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    tracemalloc.start()
    n = sum(1 for _ in iter_objects(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 48_000 and path.stat().st_size > 18 * 2**20
    assert peak < 8 * 2**20  # whole-file reading needs more than the file


CONVS = [
    Conversation.single("Sort.", "1 2", "2 1", source="a.json", line=3,
                        meta={"task": "sort", "n": [1, 2]}),
    Conversation((Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "Bye"),
                  Turn("assistant", "Bye!")), system="Be nice.", source="b.jsonl", line=7),
    Conversation((Turn("user", "call"), Turn("assistant", "calling"), Turn("tool", "42"),
                  Turn("assistant", "It is 42.")), source="c.json", line=1),
    Conversation.single("中文？", "是的。"),
]


def test_records_round_trip_through_arrow(tmp_path):
    for records in (store.write(CONVS, tmp_path / "r.arrow"), store.Records.from_list(CONVS)):
        assert list(records) == CONVS and len(records) == 4
        assert [r.meta for r in records] == [c.meta for c in CONVS]
        assert records[-1] == CONVS[-1] and records[1:3] == CONVS[1:3]
        assert list(records.select([3, 0, 0])) == [CONVS[3], CONVS[0], CONVS[0]]
        with pytest.raises(IndexError):
            records[4]
    assert store.write([], tmp_path / "empty.arrow").table.num_rows == 0


def many(n: int) -> list[Conversation]:
    return [Conversation.single(f"q{i % (n // 2)}", f"a{i % (n // 2)}", source="m.json",
                                line=i + 1) for i in range(n)]


def test_mix_dedupe_split_augment_on_arrow_equal_the_list_path(tmp_path):
    a, b = many(40), CONVS * 3
    arrow_a, arrow_b = store.write(a, tmp_path / "a.arrow"), store.write(b, tmp_path / "b.arrow")
    for kw in ({"count": 55}, {"weight": 0.5}, {}):
        lists, report = mix([Source("a", a, **kw), Source("b", b)], seed=3)
        arrows, report2 = mix([Source("a", arrow_a, **kw), Source("b", arrow_b)], seed=3)
        assert isinstance(arrows, store.Records)
        assert list(arrows) == lists and report == report2
    kept, dropped = dedupe(a)
    kept2, dropped2 = dedupe(arrow_a)
    assert list(kept2) == kept and dropped == dropped2 == 20
    for validation in (0.25, 3):
        assert [list(p) for p in split(arrow_a, validation, 1)] == list(split(a, validation, 1))
    for k_shot, cot in ((2, "en"), (0, "zh")):
        assert list(iter_augment(arrow_a, None, 0.3, k_shot, cot, 5)) == \
            list(iter_augment(a, None, 0.3, k_shot, cot, 5))


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_records_equals_encode_conversations(tmp_path, shared_data, tokenizer, workers):
    instruct = shared_data / "instruct"
    convs = read_conversations(str(instruct / "sharegpt_500.json"))[:300] + read_conversations(
        str(instruct / "alpaca_en_2k.json"), skip_invalid=True)[:700]
    records = store.write(convs, tmp_path / "records.arrow")
    template = get_template("vicuna")
    rows, report = encode_conversations(convs, tokenizer, template, 128, "assistant")
    table, report2 = encode_records(records, tokenizer, template, 128, "assistant", False,
                                    tmp_path / "encoded.arrow", workers=workers)
    assert report2.as_dict() == report.as_dict()
    assert report.turns_dropped and report.dropped and report.prompt_truncated
    assert len(table) == len(rows) == report.kept
    assert [table[i] for i in range(len(table))] == rows
    packed, packed2 = Packed(rows, 512), Packed(table, 512)
    assert len(packed) == len(packed2) < len(rows)
    assert list(packed) == list(packed2)


def test_training_set_is_prepared_in_flat_memory(tmp_path, tokenizer):
    """Reading, mixing, splitting, encoding and packing 12,000 records: Python allocations
    stay a small fraction of what the records and rows take as lists."""
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(12_000):
            rec = {"instruction": f"Repeat the number {i} three times.",
                   "input": "word " * (i % 40), "output": f"{i} {i} {i}"}
            f.write(json.dumps(rec) + "\n")
    cfg = TrainConfig(data=[str(path)], output_dir=str(tmp_path / "run"), dedupe=True,
                      validation_split=0.01, max_length=128, seed=1)
    template = get_template("alpaca")
    tracemalloc.start()
    train, validation, report = build_datasets(cfg, tmp_path / "tables", log=lambda *a: None)
    rows, encoded = encode_records(train, tokenizer, template, 128, "assistant", False,
                                   tmp_path / "tables" / "train.arrow")
    packed = Packed(rows, 128)
    sample = [packed[g] for g in range(0, len(packed), 50)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(train) == 11_880 and len(validation) == 120 and encoded.kept == 11_880
    assert all(len(s["input_ids"]) <= 128 for s in sample)
    # as lists: 12,000 Conversation objects (~1.5 KB each) and rows of ~60 ints (~5 KB)
    assert peak < 25 * 2**20, f"peak Python allocations {peak / 2**20:.0f} MiB"
