"""Loss masking, truncation and packing, token by token."""

import pytest
import torch

from unitune.data.encode import IGNORE, Collator, Packed, encode_conversations
from unitune.data.schema import Conversation, Turn
from unitune.data.templates import TEMPLATES, get_template


@pytest.fixture(scope="module")
def tokenizer(test_preset):
    from unitune.models.loading import load_tokenizer

    return load_tokenizer(str(test_preset))


def trained_text(tokenizer, row) -> list[str]:
    """The trained tokens, decoded per contiguous run."""
    runs, cur = [], []
    for tok, lab in zip(row["input_ids"], row["labels"], strict=True):
        if lab != IGNORE:
            cur.append(tok)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


MULTI = Conversation((Turn("user", "Who are you?"), Turn("assistant", "I am a model."),
                      Turn("user", "Add 2 and 3."), Turn("assistant", "5")), system="Be brief.")


def test_single_turn_trains_exactly_the_answer_and_eos(tokenizer):
    template = get_template("alpaca")
    conv = Conversation.single("Sort the numbers in ascending order.", "1 2 3", "3 1 2")
    (row,), report = encode_conversations([conv], tokenizer, template, max_length=256)
    full = template.render(conv, tokenizer)[0]
    assert row["input_ids"] == tokenizer(full)["input_ids"]  # same ids as the whole text
    prompt = tokenizer(template.render_prompt(conv, tokenizer))["input_ids"]
    assert row["input_ids"][: len(prompt)] == prompt
    assert all(lab == IGNORE for lab in row["labels"][: len(prompt)])
    assert trained_text(tokenizer, row) == ["1 2 3" + tokenizer.eos_token]
    assert row["input_ids"][0] == tokenizer.bos_token_id
    assert report.kept == 1 and report.prompt_truncated == 0


@pytest.mark.parametrize("name", ["alpaca", "vicuna", "llama-2-chat", "llama-3", "chatml", "qwen",
                                  "chatglm2", "chatglm3", "baichuan2", "internlm", "moss",
                                  "bloom"])
def test_every_assistant_turn_and_only_them(family_tokenizer, name):
    tokenizer = family_tokenizer
    template = TEMPLATES[name]
    (row,), _ = encode_conversations([MULTI], tokenizer, template, max_length=512)
    eot = template.assistant_suffix.format(eos=tokenizer.eos_token, bos=tokenizer.bos_token)
    final = template.final_suffix.format(eos=tokenizer.eos_token, bos=tokenizer.bos_token)
    runs = trained_text(tokenizer, row)
    lead = template.answer_lead
    assert runs == [f"{lead}I am a model.{eot}", f"{lead}5{eot}{final}"], runs
    # the user turns and the system prompt are never trained
    untrained = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"],
                                                       strict=True) if lab == IGNORE])
    assert "Who are you?" in untrained and "Add 2 and 3." in untrained
    assert "Be brief." in untrained  # every template renders the system prompt


def test_last_turn_only_and_all_tokens(tokenizer):
    template = get_template("chatml")
    (last,), _ = encode_conversations([MULTI], tokenizer, template, 512, masking="last")
    assert trained_text(tokenizer, last) == ["5<|im_end|>"]
    (every,), _ = encode_conversations([MULTI], tokenizer, template, 512, masking="all")
    assert every["labels"][1:] == every["input_ids"][1:] and every["labels"][0] == IGNORE


def test_inference_prompt_is_a_prefix_of_the_training_text(tokenizer):
    for template in TEMPLATES.values():
        if template.tokenizer_template:
            continue
        full, spans = template.render(MULTI, tokenizer)
        prompt = template.render_prompt(MULTI, tokenizer)
        assert full.startswith(prompt), template.name
        assert spans[-1][0] == len(prompt), template.name


def test_long_conversation_drops_early_turns_first(tokenizer):
    template = get_template("chatml")
    long = Conversation((Turn("user", "tell me a story " * 30), Turn("assistant", "long " * 30),
                         Turn("user", "and now?"), Turn("assistant", "the end")))
    (row,), report = encode_conversations([long], tokenizer, template, max_length=40)
    assert len(row["input_ids"]) <= 40
    assert trained_text(tokenizer, row) == ["the end<|im_end|>"]
    assert report.turns_dropped == 1 and report.prompt_truncated == 0


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_answer(tokenizer):
    template = get_template("alpaca")
    conv = Conversation.single("word " * 200, "the answer")
    (row,), report = encode_conversations([conv], tokenizer, template, max_length=48)
    assert len(row["input_ids"]) == 48
    assert row["input_ids"][0] == tokenizer.bos_token_id
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    assert trained_text(tokenizer, row) == ["the answer" + tokenizer.eos_token]
    assert "### Response:" in tokenizer.decode(row["input_ids"])
    assert report.prompt_truncated == 1


def test_answer_that_cannot_fit_is_dropped_and_reported(tokenizer):
    template = get_template("alpaca")
    convs = [Conversation.single("short", "ok"),
             Conversation.single("q", "long " * 100, source="f.json", line=7)]
    rows, report = encode_conversations(convs, tokenizer, template, max_length=32)
    assert len(rows) == 1 and report.kept == 1
    assert sum(report.dropped.values()) == 1
    assert report.examples_dropped == ["f.json:7"]
    assert "1 dropped" in report.summary()


def test_packing_restarts_positions_and_never_trains_across_examples(tokenizer):
    template = get_template("alpaca")
    convs = [Conversation.single(f"Count the letters {i}.", str(i)) for i in range(6)]
    rows, _ = encode_conversations(convs, tokenizer, template, max_length=512)
    packed = list(Packed(rows, max_length=512))
    assert len(packed) < len(rows)
    assert all(len(p["input_ids"]) <= 512 for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(r["input_ids"]) for r in rows)
    for p in packed:
        starts = [i for i, pos in enumerate(p["position_ids"]) if pos == 0]
        for s in starts:
            assert p["labels"][s] == IGNORE
            assert p["input_ids"][s] == tokenizer.bos_token_id


def test_packed_logits_equal_separate_logits(test_preset, tokenizer):
    """No attention across packed examples: each example's logits are as if alone, also in
    training mode for a model whose config asks for a KV cache (as real models' do)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(test_preset), dtype=torch.float32)
    model.config.use_cache = True
    model.train()  # as the Trainer runs it (the tiny preset has no dropout)
    template = get_template("alpaca")
    convs = [Conversation.single("Sort the numbers.", "1 2 3", "3 2 1"),
             Conversation.single("Count the letters.", "4", "a b c d")]
    rows, _ = encode_conversations(convs, tokenizer, template, max_length=256)
    (packed,) = Packed(rows, max_length=256)
    batch = Collator(tokenizer.pad_token_id)([packed])
    assert "attention_mask" not in batch
    with torch.no_grad():
        together = model(**batch).logits
        n = len(rows[0]["input_ids"])
        first = model(input_ids=torch.tensor([rows[0]["input_ids"]])).logits
        second = model(input_ids=torch.tensor([rows[1]["input_ids"]])).logits
    assert torch.allclose(together[0, :n], first[0], atol=1e-5)
    assert torch.allclose(together[0, n:], second[0], atol=1e-5)


def test_collator_pads_right_and_masks_padding():
    batch = Collator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                      {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_tokenizers_own_chat_template(tokenizer):
    """template 'tokenizer' renders with apply_chat_template; its masks match the named twin."""
    import copy

    from unitune.models.families import default_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHATML_JINJA
    assert default_template("llama", tok) == "tokenizer"
    (own,), _ = encode_conversations([MULTI], tok, get_template("tokenizer"), 512)
    (named,), _ = encode_conversations([MULTI], tok, get_template("chatml"), 512)
    # the Jinja template ends the conversation with a newline the named one leaves out
    n = len(named["input_ids"])
    assert own["input_ids"][:n] == named["input_ids"] and own["labels"][:n] == named["labels"]
    assert all(lab == IGNORE for lab in own["labels"][n:])
    assert trained_text(tok, own) == ["I am a model.<|im_end|>", "5<|im_end|>"]
    prompt = get_template("tokenizer").render_prompt(MULTI, tok)
    assert prompt.endswith("Add 2 and 3.<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(Exception, match="no chat_template"):
        get_template("tokenizer").render(MULTI, tokenizer)
