import json

import pytest

from unitune.data.readers import read_alpaca
from unitune.errors import UserError


def test_reads_real_alpaca_sample_with_line_numbers(shared_data):
    path = shared_data / "instruct" / "alpaca_en_2k.json"
    problems = []
    records = read_alpaca(path, skip_invalid=True, problems=problems)
    assert len(records) == 1996  # four real records have an empty output
    assert len(problems) == 4
    assert problems[0] == f"{path}:1422: output: empty; a training example needs an answer"
    with pytest.raises(UserError, match="alpaca_en_2k.json:1422: output: empty"):
        read_alpaca(path)
    first = records[0]
    assert first.line == 2 and first.instruction and first.output
    # the line a record is reported at is where its object starts
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[records[10].line - 1].strip() == "{"


def test_reads_real_chinese_alpaca(shared_data):
    records = read_alpaca(shared_data / "instruct" / "alpaca_zh_1k.json")
    assert len(records) == 1000
    assert any("\u4e00" <= ch <= "\u9fff" for ch in records[0].instruction + records[0].output)


def test_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "input": "x", '
                 '"output": "d"}\n')
    recs = read_alpaca(p)
    assert [(r.instruction, r.input, r.output, r.line) for r in recs] == [
        ("a", "", "b", 1), ("c", "x", "d", 3)]


def test_malformed_json_names_the_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": 1}\n]')
    with pytest.raises(UserError, match=r"bad.json:3:\d+: invalid JSON"):
        read_alpaca(p)


def test_trailing_comma_is_named(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n]\n')
    with pytest.raises(UserError, match=r"t.json:3: invalid JSON: trailing comma"):
        read_alpaca(p)


def test_missing_output_names_file_line_and_field(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}],
                            indent=1))
    with pytest.raises(UserError, match=r"d.json:6: output: missing"):
        read_alpaca(p)


def test_wrong_type_and_empty_output(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": 3}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: output: expected a string, got int"):
        read_alpaca(p)
    p.write_text('{"instruction": "a", "output": "  "}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: output: empty"):
        read_alpaca(p)


def test_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid UTF-8"):
        read_alpaca(p)


def test_missing_file():
    with pytest.raises(UserError, match="data file not found: nope.json"):
        read_alpaca("nope.json")
