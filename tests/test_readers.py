import json

import pytest

from unitune.data.readers import iter_records, read_conversations, read_records, to_json
from unitune.data.schema import Conversation, PlainText, PreferencePair
from unitune.errors import UserError


def test_real_alpaca_with_line_numbers_and_empty_outputs(shared_data):
    path = shared_data / "instruct" / "alpaca_en_2k.json"
    problems = []
    records = read_conversations(str(path), skip_invalid=True, problems=problems)
    assert len(records) == 1996  # four real records have an empty output
    assert len(problems) == 4
    assert problems[0] == f"{path}:1422: output: empty; a training example needs an answer"
    with pytest.raises(UserError, match="alpaca_en_2k.json:1422: output: empty"):
        read_conversations(str(path))
    first = records[0]
    assert first.line == 2 and first.is_single_turn and first.answer
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[records[10].line - 1].strip() == "{"
    with_input = next(r for r in records if r.turns[0].input)
    assert with_input.turns[0].input and with_input.turns[0].content


@pytest.mark.parametrize("name,count", [("alpaca_zh_1k.json", 1000), ("code_alpaca_2k.json", 2017),
                                        ("cot_strategyqa.json", 2061)])
def test_real_alpaca_style_files(shared_data, name, count):
    records = read_conversations(str(shared_data / "instruct" / name), skip_invalid=True)
    assert 0.99 * count <= len(records) <= count
    assert all(isinstance(r, Conversation) and r.answer for r in records)


def test_real_sharegpt_multi_turn(shared_data):
    records = read_conversations(str(shared_data / "instruct" / "sharegpt_500.json"))
    assert len(records) == 500
    multi = [r for r in records if len(r.turns) > 2]
    assert multi and all(r.turns[0].role == "user" and r.turns[-1].role == "assistant"
                         for r in records)
    assert records[0].meta["id"] == "identity_0"
    assert [t.role for t in records[2].turns] == ["user", "assistant"] * 3


def test_real_preference_pairs(shared_data):
    records = read_records(str(shared_data / "instruct" / "dpo_en_demo.json"))
    assert len(records) == 300
    assert all(isinstance(r, PreferencePair) and r.chosen and r.rejected for r in records)
    assert records[0].prompt.turns[-1].role == "user"
    with pytest.raises(UserError, match="is a preference pair"):
        read_conversations(str(shared_data / "instruct" / "dpo_en_demo.json"))


def test_real_seed_tasks_need_an_explicit_shape(shared_data):
    with pytest.raises(UserError, match=r"seed_tasks.jsonl:1: output: missing"):
        read_conversations(str(shared_data / "instruct" / "seed_tasks.jsonl"))


def test_crass_draft_trailing_comma_names_the_line(shared_data):
    path = shared_data / "eval" / "crass" / "crass_draft.json"
    text = path.read_text(encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_records(str(path))
    msg = str(err.value)
    assert "trailing comma" in msg
    line = int(msg.split(":")[1])
    assert text.splitlines()[line - 1].rstrip().endswith(",")


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return str(p)


def test_every_format_is_detected(tmp_path):
    cases = {
        "openai": {"messages": [{"role": "system", "content": "S"}, {"role": "user",
                   "content": "q"}, {"role": "assistant", "content": "a"}]},
        "dolly": {"instruction": "q", "context": "c", "response": "a", "category": "qa"},
        "flan": {"inputs": "q", "targets": "a"},
        "prompt_completion": {"prompt": "q", "completion": "a"},
        "qa": {"question": "q", "answer": "work\n#### 42", "id": 7},
        "alpaca_history": {"instruction": "q2", "output": "a2", "history": [["q1", "a1"]],
                           "system": "S"},
        "text": {"text": "plain words"},
    }
    got = {name: read_records(write(tmp_path, f"{name}.jsonl", [row]))[0]
           for name, row in cases.items()}
    assert got["openai"].system == "S" and got["openai"].answer == "a"
    assert got["dolly"].turns[0].input == "c" and got["dolly"].meta == {"category": "qa"}
    assert got["flan"].answer == "a" and got["prompt_completion"].answer == "a"
    qa = got["qa"]  # (GSM8K's layout: GRPO asks the question, the answer is the reference)
    assert (qa.turns[0].content, qa.answer, qa.meta) == ("q", "work\n#### 42", {"id": 7})
    assert to_json(qa, "qa") == {"question": "q", "answer": "work\n#### 42"}
    hist = got["alpaca_history"]
    assert [t.content for t in hist.turns] == ["q1", "a1", "q2", "a2"] and hist.system == "S"
    assert isinstance(got["text"], PlainText)
    txt = tmp_path / "c.txt"
    txt.write_text("line one\n\nline two\n")
    assert [(r.text, r.line) for r in read_records(str(txt))] == [("line one", 1),
                                                                   ("line two", 3)]


@pytest.mark.parametrize("rows,message", [
    ([{"instruction": "a", "output": "b"}, {"conversations": [{"from": "human", "value": "q"},
      {"from": "gpt", "value": "a"}]}], r"m.jsonl:2: record looks like sharegpt but the file is "
     r"alpaca \(detected at line 1\)"),
    ([{"conversations": [{"from": "human", "value": "q"}]}],
     r"m.jsonl:1: turns\[0\]: the conversation ends with a user turn"),
    ([{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}],
     r"m.jsonl:1: turns\[0\].role: a conversation must start with a user turn"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"},
                         {"from": "gpt", "value": "a"}]}],
     r"m.jsonl:1: turns\[1\].role: 'user' after 'user'; roles out of order"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}],
     r"m.jsonl:1: conversations\[1\].from: unknown role 'robot'"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}],
     r"m.jsonl:1: turns\[1\].content: empty assistant answer"),
    ([{"instruction": "a", "output": 3}], r"m.jsonl:1: output: expected a string, got int"),
    ([{"foo": 1}], r"m.jsonl:1: cannot tell the format from the fields \(foo\)"),
])
def test_bad_records_get_specific_messages(tmp_path, rows, message):
    with pytest.raises(UserError, match=message):
        read_records(write(tmp_path, "m.jsonl", rows))


def test_skip_invalid_reports_each(tmp_path):
    path = write(tmp_path, "d.jsonl", [{"instruction": "a", "output": "b"},
                                        {"instruction": "c"}, {"instruction": "d", "output": ""}])
    problems = []
    assert len(read_records(path, skip_invalid=True, problems=problems)) == 1
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:2", f"{path}:3"]


def test_jsonl_is_streamed(tmp_path):
    path = write(tmp_path, "d.jsonl", [{"instruction": "a", "output": "b"}, "not an object"])
    it = iter_records(path)
    assert next(it).answer == "b"  # the first record arrives before the bad line is read
    with pytest.raises(UserError, match="d.jsonl:2: record is a str"):
        next(it)


def test_malformed_json_and_trailing_comma_and_utf8(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": 1}\n]')
    with pytest.raises(UserError, match=r"bad.json:3:\d+: invalid JSON"):
        read_records(str(p))
    p.write_text('[\n {"instruction": "a", "output": "b"},\n]\n')
    with pytest.raises(UserError, match=r"bad.json:2: invalid JSON: trailing comma"):
        read_records(str(p))
    q = tmp_path / "d.jsonl"
    q.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid UTF-8"):
        read_records(str(q))
    with pytest.raises(UserError, match="data file not found: nope.json"):
        read_records("nope.json")


@pytest.mark.parametrize("fmt", ["sharegpt", "openai"])
def test_convert_round_trip_multi_turn(shared_data, tmp_path, fmt):
    records = read_conversations(str(shared_data / "instruct" / "sharegpt_500.json"))[:50]
    path = write(tmp_path, f"c.{fmt}.jsonl", [to_json(r, fmt) for r in records])
    back = read_conversations(path)
    assert [(b.system, b.turns) for b in back] == [(r.system, r.turns) for r in records]


def test_convert_alpaca_round_trip_and_refusals(shared_data, tmp_path):
    records = read_conversations(str(shared_data / "instruct" / "alpaca_zh_1k.json"))[:50]
    back = read_conversations(write(tmp_path, "a.jsonl", [to_json(r, "alpaca") for r in records]))
    assert [b.turns for b in back] == [r.turns for r in records]
    multi = read_conversations(str(shared_data / "instruct" / "sharegpt_500.json"))[2]
    with pytest.raises(UserError, match="cannot be written as flan"):
        to_json(multi, "flan")
    assert len(to_json(multi, "alpaca")["history"]) == 2


def test_json_lines_in_a_json_file_with_a_long_first_record(tmp_path):
    """The first line is read whole to tell JSON Lines from a single document."""
    path = tmp_path / "long.json"
    path.write_text("\n".join(json.dumps({"instruction": "x" * 6000, "output": f"o{i}"})
                              for i in range(3)), encoding="utf-8")
    assert [r.answer for r in read_records(str(path))] == ["o0", "o1", "o2"]


def test_tool_definitions_calls_and_results_are_read_not_dropped(tmp_path):
    """OpenAI messages (tools + tool_calls with JSON-text arguments, null content) and
    ShareGPT (tools as JSON text, function_call / observation turns) give the same
    conversation; converting and storing keep the tools."""
    from unitune.data import store

    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    openai = {"tools": [tool], "messages": [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "assistant", "content": "It is 5."}]}
    sharegpt = {"tools": json.dumps([tool]), "conversations": [
        {"from": "human", "value": "2+3?"},
        {"from": "function_call",
         "value": json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})},
        {"from": "observation", "value": "5"},
        {"from": "gpt", "value": "It is 5."}]}
    for name, record in (("o.jsonl", openai), ("s.jsonl", sharegpt)):
        (tmp_path / name).write_text(json.dumps(record) + "\n")
    (a,), (b,) = (read_conversations(str(tmp_path / n)) for n in ("o.jsonl", "s.jsonl"))
    assert a.tool_list() == [tool] and a.turns == b.turns and a.tools == b.tools
    assert a.turns[1].calls() == [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    assert [t.role for t in a.turns] == ["user", "assistant", "tool", "assistant"]
    for fmt in ("openai", "sharegpt"):  # written back, read again: the same
        (tmp_path / f"back_{fmt}.jsonl").write_text(json.dumps(to_json(a, fmt)) + "\n")
        (again,) = read_conversations(str(tmp_path / f"back_{fmt}.jsonl"))
        assert again.turns == a.turns and again.tools == a.tools, fmt
    (stored,) = store.write([a], tmp_path / "records.arrow")
    assert stored.turns == a.turns and stored.tools == a.tools


def test_a_bad_tool_call_names_the_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"conversations": [
        {"from": "human", "value": "q"}, {"from": "function_call", "value": "{not json"},
        {"from": "gpt", "value": "a"}]}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: conversations\[1\].value: not valid "
                                        "JSON"):
        read_conversations(str(path))


@pytest.mark.parametrize("record,expected", [
    ({"messages": [{"role": "user", "content": "q", "tool_calls": [
        {"function": {"name": "f", "arguments": {}}}]}]},
     "only an assistant message calls tools"),
    ({"conversations": [{"from": "human", "value": "q"},
                        {"from": "function_call", "value": '{"name": "f"}'}]},
     "a tool call needs a 'name' and 'arguments'"),
    ({"conversations": [{"from": "human", "value": "q"},
                        {"from": "function_call", "value": '{"name": "f", "arguments": 3}'}]},
     "arguments: expected a JSON object, got int"),
    ({"conversations": [{"from": "human", "value": "q"},
                        {"from": "function_call", "value": "[]"}]}, "no tool calls in it"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                        {"from": "observation", "value": "r"}, {"from": "gpt", "value": "b"}]},
     "a tool result after an assistant turn that calls no tool"),
])
def test_malformed_tool_data_is_a_clear_error(tmp_path, record, expected):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=f"t.jsonl:1: .*{expected}"):
        read_conversations(str(path))


def test_words_then_a_call_round_trip_through_sharegpt_and_empty_tools_are_none(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"tools": "[]", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]}) + "\n")
    (conv,) = read_conversations(str(path))
    assert conv.tools == "" and conv.turns[1].content == "Let me look."
    (tmp_path / "s.jsonl").write_text(json.dumps(to_json(conv, "sharegpt")) + "\n")
    (again,) = read_conversations(str(tmp_path / "s.jsonl"))
    assert again.turns == conv.turns
