"""Chat formats against the families' own: the official chat templates (text and, with the
real Llama-2 tokenizer, token ids), the tokenizer's own template (spans, BOS, stopping), the
chat_template every run saves, and slow tokenizers."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from unitune.data.encode import IGNORE, encode_conversations
from unitune.data.schema import Conversation, Turn
from unitune.data.templates import TEMPLATES, get_template

# unitune's template for each reference in ../shared/data/templates/official_chat_templates.json
REFERENCES = {"llama-2-chat": "llama-2-chat", "llama-3": "llama-3", "qwen2": "qwen2",
              "qwen2.5": "qwen", "chatml": "chatml", "chatglm3": "chatglm3"}

CONVERSATIONS = {
    "single": Conversation((Turn("user", "Sort 3 1 2."), Turn("assistant", "1 2 3"))),
    "system": Conversation((Turn("user", "Hi"), Turn("assistant", "Hello!")),
                           system="Be brief."),
    "multi": Conversation((Turn("user", "Who are you?"), Turn("assistant", "A model."),
                           Turn("user", "Add 2 and 3."), Turn("assistant", "5")),
                          system="You count."),
    "non-ascii": Conversation((Turn("user", "把四十二写成数字"), Turn("assistant", "42 ✓"),
                               Turn("user", "Ünïcödé?"), Turn("assistant", "ja, 是的"))),
    "whitespace": Conversation((Turn("user", "  padded question \n"),
                                Turn("assistant", " padded answer  "),
                                Turn("user", "\tnext\t"), Turn("assistant", "\n last \n")),
                               system="  spaced system  "),
}


@pytest.fixture(scope="module")
def references(shared_data) -> dict:
    return json.loads((shared_data / "templates" / "official_chat_templates.json").read_text())


class Specials:
    """What rendering reads of a tokenizer: its BOS and EOS strings."""

    def __init__(self, bos, eos):
        self.bos_token, self.eos_token = bos, eos


def messages(conv: Conversation) -> list[dict]:
    head = [{"role": "system", "content": conv.system}] if conv.system else []
    return head + [{"role": t.role, "content": t.content} for t in conv.turns]


def render_reference(ref: dict, msgs: list[dict], generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[msgs], chat_template=ref["chat_template"],
        add_generation_prompt=generation_prompt, bos_token=ref["bos_token"] or "",
        eos_token=ref["eos_token"])
    return rendered[0]


@pytest.mark.parametrize("shape", list(CONVERSATIONS))
@pytest.mark.parametrize("reference", list(REFERENCES))
def test_named_templates_render_the_official_text(references, reference, shape):
    ref, template = references[reference], TEMPLATES[REFERENCES[reference]]
    conv = CONVERSATIONS[shape]
    tok = Specials(ref["bos_token"], ref["eos_token"])
    ours, spans = template.render(conv, tok)
    theirs = render_reference(ref, messages(conv), generation_prompt=False)
    # ChatGLM3's own fine-tuning code closes the conversation with EOS, which its jinja
    # chat template (an inference format) leaves out
    final = template.final_suffix.format(eos=ref["eos_token"], bos="")
    assert ours == theirs + final
    prompt = template.render_prompt(conv, tok)
    assert prompt == render_reference(ref, messages(conv)[:-1], generation_prompt=True)
    # the trained spans are the replies (stripped where the reference strips) + end of turn
    for (start, end), turn in zip(spans, [t for t in conv.turns if t.role == "assistant"],
                                  strict=True):
        reply = turn.content.strip() if template.strip else turn.content
        assert reply in ours[start:end]


@pytest.fixture(scope="module")
def llama2(shared_data, tmp_path_factory, references):
    """The real Llama-2 tokenizer (fast), with the official Llama-2-chat template."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("llama2")
    shutil.copy(shared_data / "tokenizers" / "llama2_sp.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "legacy": False,
        "chat_template": references["llama-2-chat"]["chat_template"]}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.pad_token = tok.eos_token
    return tok


@pytest.mark.parametrize("shape", list(CONVERSATIONS))
def test_llama2_chat_token_ids_equal_the_official_templates(llama2, shape):
    """Token for token, with the real Llama-2 tokenizer: the named template, and the
    tokenizer's own template, give exactly what apply_chat_template gives; one BOS."""
    conv = CONVERSATIONS[shape]
    official = llama2.apply_chat_template(messages(conv), tokenize=True, return_dict=True)[
        "input_ids"]
    for name in ("llama-2-chat", "tokenizer"):
        (row,), report = encode_conversations([conv], llama2, get_template(name), 1024)
        assert row["input_ids"] == official, name
        assert row["input_ids"][:2] != [1, 1]  # no doubled BOS
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True)
                   if lab != IGNORE]
        last = [t for t in conv.turns if t.role == "assistant"][-1].content.strip()
        assert llama2.decode(trained).endswith(f"{last} </s>"), name
        assert report.kept == 1


@pytest.fixture(scope="module")
def llama3_tokenizer(test_preset, references):
    """The test tokenizer dressed as Llama-3: its header tokens and its official template."""
    from unitune.models.loading import load_tokenizer

    tok = load_tokenizer(str(test_preset))
    tok.add_special_tokens({"additional_special_tokens": [
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = references["llama-3"]["chat_template"]
    return tok


def test_a_trimmed_reply_still_trains(llama3_tokenizer):
    """The official Llama-3 template trims messages: a reply with edge whitespace used to
    train zero tokens, silently. Now its trimmed text and <|eot_id|> are trained."""
    conv = CONVERSATIONS["whitespace"]
    (row,), report = encode_conversations([conv], llama3_tokenizer, get_template("tokenizer"),
                                          1024)
    assert report.kept == 1
    trained = llama3_tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"],
                                                           strict=True) if lab != IGNORE])
    assert trained == "padded answer<|eot_id|>last<|eot_id|>"
    named, _ = encode_conversations([conv], llama3_tokenizer, get_template("llama-3"), 1024)
    assert named[0]["input_ids"] == row["input_ids"] and named[0]["labels"] == row["labels"]


def test_a_reply_that_cannot_be_located_is_reported_as_dropped(llama3_tokenizer):
    tok = copy.copy(llama3_tokenizer)
    # a template that renders assistant messages as nothing
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}"
                         "{% endif %}{% endfor %}")
    rows, report = encode_conversations([CONVERSATIONS["single"]], tok,
                                        get_template("tokenizer"), 256)
    assert rows == [] and report.kept == 0
    assert list(report.dropped) == ["reply not located: the chat template renders this "
                                    "reply as nothing"]


def test_generation_stops_at_the_end_of_turn_token(llama3_tokenizer):
    """A model that always predicts <|eot_id|> stops after it with the tokenizer's own
    template (the end-of-turn marker found from the template) and with the named one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unitune.infer.generate import Decoding, answer, eos_ids

    tok = llama3_tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    head = torch.nn.Linear(32, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eot] = 10.0
    model.lm_head = head
    calls = []
    head.register_forward_hook(lambda *_: calls.append(1))
    for name in ("tokenizer", "llama-3"):
        template = get_template(name)
        assert eot in eos_ids(model, tok, template.stop_strings(tok))[0], name
        calls.clear()
        out = answer(model, tok, template, [CONVERSATIONS["single"]],
                     Decoding(max_new_tokens=20))
        assert out == [""] and len(calls) == 1, (name, len(calls))  # one step, then stop


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "tokenizer"])
def test_every_templates_chat_template_renders_what_it_trains(family_tokenizer, name):
    """The chat_template a run saves gives apply_chat_template (and so vLLM, llama.cpp)
    exactly unitune's text and token ids, for prompts and whole conversations."""
    tok = family_tokenizer
    template = get_template(name)
    saved = template.with_chat_template(tok)
    bos = tok.bos_token if template.add_special_tokens and \
        tok("x")["input_ids"][0] == tok.bos_token_id else ""
    convs = [*CONVERSATIONS.values(),
             Conversation.single("Sort the numbers.", "1 2 3", input="3 1 2")]
    for conv in convs:
        msgs = messages(conv)
        if conv.turns[0].input:
            msgs[0]["content"], msgs[0]["input"] = conv.turns[0].content, conv.turns[0].input
        assert saved.apply_chat_template(msgs, tokenize=False) == bos + template.render(
            conv, tok)[0]
        assert saved.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True) \
            == bos + template.render_prompt(conv, tok)
        (row,), _ = encode_conversations([conv], tok, template, 2048)
        ids = saved.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
        assert ids == row["input_ids"], conv


def test_a_slow_tokenizer_trains_the_same_tokens(shared_data, llama2):
    """A slow SentencePiece tokenizer (no offsets) finds the same trained tokens as the fast
    one, by tokenising the text up to each reply's boundaries."""
    from transformers import SentencePieceBackend

    slow = SentencePieceBackend(vocab_file=str(shared_data / "tokenizers" / "llama2_sp.model"),
                                bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                add_bos_token=True)
    slow.pad_token = slow.eos_token
    assert not slow.is_fast
    for name in ("llama-2-chat", "vicuna"):
        template = get_template(name)
        convs = list(CONVERSATIONS.values())
        slow_rows, slow_report = encode_conversations(convs, slow, template, 1024)
        for conv, row in zip(convs, slow_rows, strict=True):
            # (SentencePiece's own decoder: the backend's shows newlines as <0x0A>)
            trained = slow.sp_model.decode([t for t, lab in zip(
                row["input_ids"], row["labels"], strict=True) if lab != IGNORE])
            last = [t for t in conv.turns if t.role == "assistant"][-1].content
            assert (last.strip() if template.strip else last.rstrip()) in trained, name
            assert row["input_ids"] == slow(template.render(conv, slow)[0],
                                            add_special_tokens=template.add_special_tokens)[
                "input_ids"]
        assert slow_report.kept == len(convs)


def test_a_prompt_that_tokenizes_differently_from_training_is_flagged(llama2):
    """A format whose prompt ends in a space: at inference the space is a token of its own,
    in training it is part of the reply's first token. Flagged; the named templates are not."""
    from dataclasses import replace

    from unitune.data.encode import prompt_mismatches

    conv = CONVERSATIONS["multi"]
    trailing = replace(get_template("vicuna"), name="trailing", assistant_prefix="ASSISTANT: ",
                       answer_lead="")
    problems = prompt_mismatches(conv, llama2, trailing)
    # ("A model." is "▁A" in training, "▁" + "A" when asked; "5" is "▁" + "5" either way)
    assert problems == [problems[0]] and problems[0].startswith(
        "reply 1: the prompt's tokens differ from the training text's at token")
    for name in ("vicuna", "llama-2-chat", "alpaca", "tokenizer"):
        assert prompt_mismatches(conv, llama2, get_template(name)) == [], name


def test_preview_shows_the_ids_at_every_boundary(test_preset, synth_data, capsys):
    from unitune.cli import main

    assert main(["data", "preview", str(synth_data["train"]), "-n", "1", "--base-model",
                 "tiny-llama-test", "--ids", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "trained from token" in out and "untrained from token" not in out  # (EOS last)
    assert "| " in out and "warning" not in out
