"""Loss masking and truncation, token by token."""

import pytest

from unitune.data.encode import IGNORE, Collator, encode_records
from unitune.data.readers import Record
from unitune.data.templates import get_template


@pytest.fixture(scope="module")
def tokenizer(test_preset):
    from unitune.models.loading import load_tokenizer

    return load_tokenizer(str(test_preset))


def rec(instruction, output, input=""):
    return Record(instruction, input, output, "mem", 1)


def test_only_the_response_and_eos_are_trained(tokenizer):
    template = get_template("alpaca")
    r = rec("Sort the numbers in ascending order.", "1 2 3", "3 1 2")
    (ex,), report = encode_records([r], tokenizer, template, max_length=256)
    prompt = tokenizer(template.render_prompt(r.instruction, r.input))["input_ids"]
    answer = tokenizer(r.output, add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert ex["labels"] == [IGNORE] * len(prompt) + answer + [tokenizer.eos_token_id]
    assert ex["input_ids"][0] == tokenizer.bos_token_id
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    assert tokenizer.decode(trained) == "1 2 3" + tokenizer.eos_token
    assert report.kept == 1 and report.prompt_truncated == 0


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_answer(tokenizer):
    template = get_template("alpaca")
    r = rec("word " * 200, "the answer")
    (ex,), report = encode_records([r], tokenizer, template, max_length=48)
    assert len(ex["input_ids"]) == 48
    assert ex["input_ids"][0] == tokenizer.bos_token_id
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    assert tokenizer.decode(trained) == "the answer" + tokenizer.eos_token
    # the response header survives truncation
    assert "### Response:" in tokenizer.decode(ex["input_ids"])
    assert report.prompt_truncated == 1


def test_answer_that_cannot_fit_is_dropped_and_reported(tokenizer):
    template = get_template("alpaca")
    records = [rec("short", "ok"), Record("q", "", "long " * 100, "f.json", 7)]
    rows, report = encode_records(records, tokenizer, template, max_length=32)
    assert len(rows) == 1 and report.kept == 1
    assert sum(report.dropped.values()) == 1
    assert report.examples_dropped == ["f.json:7"]
    assert "1 dropped" in report.summary()


def test_collator_pads_right_and_masks_padding():
    batch = Collator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                      {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
