import json
import os
import random

import pytest

from unitune.data.augment import (
    COT_SUFFIXES,
    add_cot_suffix,
    few_shot,
    iter_augment,
    load_flan_templates,
    render_flan,
)
from unitune.data.schema import Conversation, Turn
from unitune.errors import UserError


def augment(*args, **kwargs) -> list[Conversation]:
    return list(iter_augment(*args, **kwargs))


def recs(n: int) -> list[Conversation]:
    return [Conversation.single(f"question {i}", f"answer {i}", source="d.json", line=i + 1,
                                meta={"id": i}) for i in range(n)]


@pytest.fixture(scope="module")
def flan_file(shared_data):
    path = shared_data / "templates" / "flan_v1_templates.json"
    if not path.is_file():
        if os.environ.get("UNITUNE_REQUIRE_SHARED") == "1":
            pytest.fail(f"UNITUNE_REQUIRE_SHARED=1 but {path} does not exist")
        pytest.skip(f"{path} not present")
    return path


RTE_FIELDS = {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.",
              "options_": "OPTIONS:\n- yes\n- no", "answer": "yes"}


# ---- FLAN templates ---------------------------------------------------------------------------

def test_load_real_flan_templates(flan_file):
    templates = load_flan_templates(flan_file)
    assert len(templates) == 61
    assert len(templates["rte"]) == 10
    assert all(isinstance(a, str) and isinstance(b, str) for a, b in templates["rte"])
    assert templates["rte"][0][0].startswith("{premise}")


def test_render_flan_on_real_rte_templates(flan_file):
    rte = load_flan_templates(flan_file)["rte"]
    seen = set()
    for s in range(40):
        prompt, target = render_flan(rte, RTE_FIELDS, random.Random(s))
        assert "{" not in prompt and "{" not in target
        assert "cat" in prompt or "cat" in target
        seen.add(prompt)
    assert len(seen) > 3  # the template pair is picked at random
    a = render_flan(rte, RTE_FIELDS, random.Random(1))
    assert a == render_flan(rte, RTE_FIELDS, random.Random(1))
    # the first template, filled in
    first = render_flan(rte[:1], RTE_FIELDS, random.Random(0))
    assert first == ('The cat sat on the mat.\n\nBased on the paragraph above can we conclude '
                     'that "A cat is sitting."?\n\nOPTIONS:\n- yes\n- no', "yes")


def test_render_flan_missing_placeholder_names_it(flan_file):
    rte = load_flan_templates(flan_file)["rte"]
    fields = dict(RTE_FIELDS)
    del fields["hypothesis"]
    with pytest.raises(UserError, match=r"missing placeholder \{hypothesis\}") as e:
        render_flan(rte[:1], fields, random.Random(0))
    assert "Based on the paragraph above" in str(e.value)  # names the template


def test_load_flan_templates_errors(tmp_path):
    with pytest.raises(UserError, match="nope.json: template file not found"):
        load_flan_templates(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"rte": [["a", "b"],\n}')
    with pytest.raises(UserError, match=r"bad.json:2: invalid JSON"):
        load_flan_templates(bad)
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps([["a", "b"]]))
    with pytest.raises(UserError, match="shape.json: expected a JSON object"):
        load_flan_templates(shape)
    shape.write_text(json.dumps({"rte": [["only one"]]}))
    with pytest.raises(UserError, match=r"shape.json: task 'rte': template 0"):
        load_flan_templates(shape)
    shape.write_text(json.dumps({"rte": []}))
    with pytest.raises(UserError, match="task 'rte': expected a non-empty list"):
        load_flan_templates(shape)


# ---- few-shot ---------------------------------------------------------------------------------

def test_zero_shot_is_unchanged():
    data = recs(5)
    assert few_shot(data, data[0], 0, random.Random(0)) is data[0]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_few_shot_has_k_other_examples_never_the_target(k):
    data = recs(6)
    for s in range(20):
        target = data[s % 6]
        out = few_shot(data, target, k, random.Random(s))
        user = out.turns[0].content
        assert user.count("Q: ") == k and user.count("\nA: ") == k
        shots = [b for b in user.split("\n\n") if b.startswith("Q: ")]
        assert len(shots) == k
        for block in shots:
            q, a = block.split("\n")
            i = int(q.removeprefix("Q: question "))
            assert i != s % 6 and a == f"A: answer {i}"
        assert user.endswith(f"\n\nquestion {s % 6}")
        assert out.is_single_turn and out.answer == target.answer
        assert (out.source, out.line, out.meta) == (target.source, target.line, target.meta)


def test_few_shot_excludes_a_duplicate_of_the_target_and_keeps_input():
    target = Conversation.single("translate", "bonjour", input="hello", line=7,
                                 meta={"k": 1})
    copy = Conversation.single("translate", "bonjour", input="hello", line=7)
    other = Conversation.single("add", "4", input="2+2", line=8)
    multi = Conversation((Turn("user", "hi"), Turn("assistant", "yo"), Turn("user", "x"),
                          Turn("assistant", "y")))
    out = few_shot([target, copy, other, multi], target, 1, random.Random(0))
    assert out.turns[0].content == "Q: add\n\n2+2\nA: 4\n\ntranslate"
    assert out.turns[0].input == "hello"
    assert out.meta == {"k": 1} and out.line == 7
    with pytest.raises(UserError, match="2 examples requested but only 1"):
        few_shot([target, copy, other, multi], target, 2, random.Random(0))


def test_few_shot_deterministic_and_seeded():
    data = recs(20)
    a = few_shot(data, data[3], 3, random.Random(1))
    assert a == few_shot(data, data[3], 3, random.Random(1))
    assert a != few_shot(data, data[3], 3, random.Random(2))


# ---- CoT suffix -------------------------------------------------------------------------------

def test_cot_suffix_english_idempotent():
    conv = Conversation.single("What is 2+3?", "5", line=3, meta={"m": 1})
    once = add_cot_suffix(conv)
    assert once.turns[0].content == "What is 2+3?\nLet's think step by step."
    assert once.answer == "5" and once.line == 3 and once.meta == {"m": 1}
    assert add_cot_suffix(once) == once
    assert add_cot_suffix(add_cot_suffix(once)).turns[0].content.count("step by step") == 1
    assert conv.turns[0].content == "What is 2+3?"  # the original is untouched


def test_cot_suffix_chinese():
    conv = Conversation.single("小明有3个苹果，又买了2个，一共几个？", "5个")
    out = add_cot_suffix(conv, lang="zh")
    assert COT_SUFFIXES["zh"] == "先思考，再决定。"
    assert out.turns[0].content == "小明有3个苹果，又买了2个，一共几个？\n先思考，再决定。"
    assert add_cot_suffix(out, lang="zh") == out
    with pytest.raises(UserError, match="did you mean 'zh'"):
        add_cot_suffix(conv, lang="zhh")


def test_cot_suffix_goes_on_the_last_user_turn():
    conv = Conversation((Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"),
                         Turn("assistant", "d")))
    out = add_cot_suffix(conv)
    assert out.turns[0].content == "a"
    assert out.turns[2].content == "c\nLet's think step by step."


# ---- augment ----------------------------------------------------------------------------------

def test_augment_deterministic_and_seeded():
    data = recs(30)
    a = augment(data, None, zero_shot_ratio=0.5, k_shot=2, cot_suffix=None, seed=0)
    b = augment(data, None, zero_shot_ratio=0.5, k_shot=2, cot_suffix=None, seed=0)
    c = augment(data, None, zero_shot_ratio=0.5, k_shot=2, cot_suffix=None, seed=1)
    assert a == b and a != c
    assert len(a) == 30
    assert [x.line for x in a] == [x.line for x in data]  # order kept
    n_few = sum("Q: " in x.turns[0].content for x in a)
    assert 5 < n_few < 25  # about half
    for x, orig in zip(a, data, strict=True):
        assert x.answer == orig.answer and x.meta == orig.meta
        if "Q: " in x.turns[0].content:
            shots = [b for b in x.turns[0].content.split("\n\n") if b.startswith("Q: ")]
            assert len(shots) == 2
            assert all(  # never the target itself
                b.split("\n")[0] != f"Q: {orig.turns[0].content}" for b in shots)


def test_augment_ratios_and_cot():
    data = recs(10)
    zero = augment(data, None, zero_shot_ratio=1.0, k_shot=3, cot_suffix=None, seed=0)
    assert zero == data
    allfew = augment(data, None, zero_shot_ratio=0.0, k_shot=3, cot_suffix="en", seed=0)
    for x in allfew:
        assert x.turns[0].content.count("Q: ") == 3
        assert x.turns[0].content.endswith("\nLet's think step by step.")
    zh = augment(data, None, zero_shot_ratio=1.0, k_shot=0, cot_suffix="zh", seed=0)
    assert all(x.turns[0].content.endswith("\n先思考，再决定。") for x in zh)
    with pytest.raises(UserError, match="zero_shot_ratio"):
        augment(data, None, zero_shot_ratio=1.5, k_shot=1, cot_suffix=None, seed=0)
    with pytest.raises(UserError, match="CoT"):
        augment(data, None, zero_shot_ratio=1.0, k_shot=1, cot_suffix="fr", seed=0)


def test_augment_passes_multi_turn_through_and_handles_tiny_lists():
    multi = Conversation((Turn("user", "hi"), Turn("assistant", "yo"), Turn("user", "x"),
                          Turn("assistant", "y")))
    one = Conversation.single("only", "one")
    out = augment([multi, one], None, zero_shot_ratio=0.0, k_shot=4, cot_suffix="en", seed=0)
    assert out[0] is multi
    assert out[1].turns[0].content == "only\nLet's think step by step."  # no other example
    two = recs(2)
    out = augment(two, None, zero_shot_ratio=0.0, k_shot=4, cot_suffix=None, seed=0)
    assert out[0].turns[0].content == "Q: question 1\nA: answer 1\n\nquestion 0"
    assert out[1].turns[0].content == "Q: question 0\nA: answer 0\n\nquestion 1"


def test_augment_renders_flan_records_with_the_real_templates(flan_file):
    flan = [Conversation.single("unused", "yes", line=i + 1,
                                meta={"flan_task": "rte", "flan_fields": {
                                    "premise": f"Premise {i}.", "hypothesis": f"Hyp {i}.",
                                    "options_": "OPTIONS:\n- yes\n- no"}})
            for i in range(8)]
    plain = Conversation.single("plain question", "plain answer", line=99)
    out = augment(flan + [plain], str(flan_file), zero_shot_ratio=1.0, k_shot=0,
                  cot_suffix=None, seed=0)
    assert out[-1] == plain
    prompts = set()
    for i, x in enumerate(out[:-1]):
        text = x.turns[0].content + x.answer
        assert f"Premise {i}." in text and "unused" not in text
        assert x.line == i + 1 and x.meta["flan_task"] == "rte"
        prompts.add(x.turns[0].content.replace(str(i), ""))
    assert len(prompts) > 1  # different templates were drawn
    again = augment(flan + [plain], str(flan_file), zero_shot_ratio=1.0, k_shot=0,
                    cot_suffix=None, seed=0)
    assert again == out
    broken = Conversation.single("q", "a", source="x.json", line=5,
                                 meta={"flan_task": "rte", "flan_fields": {"premise": "p"}})
    with pytest.raises(UserError, match=r"x.json:5: FLAN task 'rte': .*missing placeholder"):
        augment([broken], str(flan_file), zero_shot_ratio=1.0, k_shot=0, cot_suffix=None,
                seed=0)
