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
    theirs = render_reference(ref, conv.messages(), generation_prompt=False)
    # ChatGLM3's own fine-tuning code closes the conversation with EOS, which its jinja
    # chat template (an inference format) leaves out
    final = template.final_suffix.format(eos=ref["eos_token"], bos="")
    assert ours == theirs + final
    prompt = template.render_prompt(conv, tok)
    assert prompt == render_reference(ref, conv.messages()[:-1], generation_prompt=True)
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
    official = llama2.apply_chat_template(conv.messages(), tokenize=True, return_dict=True)[
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
        msgs = conv.messages()
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

    class BosAndEos(SentencePieceBackend):
        """A slow tokenizer that adds BOS before and EOS after every text (as some do)."""

        def build_inputs_with_special_tokens(self, ids, pair=None):
            return [self.bos_token_id, *ids, self.eos_token_id]

    slow = BosAndEos(vocab_file=str(shared_data / "tokenizers" / "llama2_sp.model"),
                     bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    slow.pad_token = slow.eos_token
    assert not slow.is_fast and slow("x")["input_ids"][-1] == slow.eos_token_id
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
            # the tokenizer's BOS (where the template leaves it to the tokenizer), never its
            # appended EOS: the template closes the reply itself
            bare = slow(template.render(conv, slow)[0], add_special_tokens=False)["input_ids"]
            bos = [slow.bos_token_id] if template.add_special_tokens else []
            assert row["input_ids"] == bos + bare
            assert row["input_ids"][-2:] != [slow.eos_token_id] * 2
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


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOL_USE = Conversation(
    (Turn("user", "Weather in Paris and 北京?"),
     Turn("assistant", "", tool_calls=json.dumps(
         [{"name": "get_weather", "arguments": {"city": "Paris"}},
          {"name": "get_weather", "arguments": {"city": "北京"}}], ensure_ascii=False)),
     Turn("tool", '{"temp": 21}'), Turn("tool", '{"temp": 30}'),
     Turn("assistant", "Paris 21°C, 北京 30°C.")),
    tools=json.dumps([WEATHER]))


def test_qwen_tool_use_renders_the_official_text(references):
    """Tool definitions, calls and (grouped) results exactly as Qwen2.5's own template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    ref = references["qwen2.5"]
    tok = Specials(None, ref["eos_token"])
    ours, spans = get_template("qwen").render(TOOL_USE, tok)
    theirs, _ = render_jinja_template(conversations=[TOOL_USE.messages()],
                                      tools=[WEATHER], chat_template=ref["chat_template"],
                                      eos_token=ref["eos_token"])
    assert ours == theirs[0]
    assert "# Tools" in ours and ours.count("<tool_response>") == 2
    # the call is a trained reply, the tool results are not trained
    assert [ours[s:e] for s, e in spans] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
        '<|im_end|>', "Paris 21°C, 北京 30°C.<|im_end|>"]


def test_tool_use_through_the_tokenizers_own_template(family_tokenizer, references):
    tok = copy.copy(family_tokenizer)
    tok.chat_template = references["qwen2.5"]["chat_template"]
    (own,), report = encode_conversations([TOOL_USE], tok, get_template("tokenizer"), 2048)
    (named,), _ = encode_conversations([TOOL_USE], tok, get_template("qwen"), 2048)
    assert report.kept == 1
    assert own["input_ids"] == named["input_ids"] and own["labels"] == named["labels"]
    trained = tok.decode([t for t, lab in zip(own["input_ids"], own["labels"], strict=True)
                          if lab != IGNORE])
    assert '"city": "Paris"' in trained and "temp" not in trained  # calls yes, results no


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n not in ("tokenizer", "raw")])
def test_tool_use_in_every_templates_saved_chat_template(family_tokenizer, name):
    """Formats without a tool syntax of their own carry the definitions in the system prompt
    and the calls as JSON; the saved chat_template renders tools the same way."""
    tok = family_tokenizer
    template = get_template(name)
    text, spans = template.render(TOOL_USE, tok)
    assert "get_weather" in text[: spans[0][0]] and len(spans) == 2
    saved = template.with_chat_template(tok)
    bos = tok.bos_token if template.add_special_tokens and \
        tok("x")["input_ids"][0] == tok.bos_token_id else ""
    assert saved.apply_chat_template(TOOL_USE.messages(), tools=[WEATHER],
                                     tokenize=False) == bos + text


def test_a_template_without_a_system_prompt_cannot_carry_tools(family_tokenizer):
    rows, report = encode_conversations([TOOL_USE], family_tokenizer, get_template("raw"), 512)
    assert rows == [] and list(report.dropped) == [
        "reply not located: template raw has no system prompt to carry the tool definitions"]


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "tokenizer"])
def test_every_inference_prompt_is_the_start_of_the_training_text(family_tokenizer, name):
    """As text, for every template and conversation (whether it also tokenises as the start
    depends on the tokenizer: `data preview` warns where it does not)."""
    from unitune.data.encode import prompt_mismatches

    for conv in [*CONVERSATIONS.values(), *([TOOL_USE] if name != "raw" else [])]:
        problems = prompt_mismatches(conv, family_tokenizer, get_template(name))
        text_problems = [p for p in problems if "prompt's text differs" in p]
        assert text_problems == [], (name, text_problems)


# --- the families whose reference is code, not a jinja template: their code, restated -----------

def alpaca_cot(conv: Conversation, eos: str) -> str:
    """PhoebusSi/Alpaca-CoT finetune.py generate_prompt (+ the EOS its tokenizer appends)."""
    turn, out = conv.turns[0], conv.turns[1].content
    if turn.input:
        return ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                f"request.\n\n### Instruction:\n{turn.content}\n\n### Input:\n{turn.input}\n\n"
                f"### Response:\n{out}") + eos
    return ("Below is an instruction that describes a task. Write a response that "
            f"appropriately completes the request.\n\n### Instruction:\n{turn.content}\n\n"
            f"### Response:\n{out}") + eos


def fastchat_vicuna(conv: Conversation, eos: str) -> str:
    """FastChat conversation.py, vicuna_v1.1: SeparatorStyle.ADD_COLON_TWO."""
    system = conv.system or ("A chat between a curious user and an artificial intelligence "
                             "assistant. The assistant gives helpful, detailed, and polite "
                             "answers to the user's questions.")
    seps, ret = [" ", eos], system + " "
    for i, turn in enumerate(conv.turns):
        ret += ("USER" if turn.role == "user" else "ASSISTANT") + ": " + \
            (turn.user_text() if turn.role == "user" else turn.content) + seps[i % 2]
    return ret


def chatglm2(conv: Conversation, eos: str) -> str:
    """THUDM/chatglm2-6b tokenization_chatglm.py build_prompt, + ptuning main.py's EOS."""
    pairs = [(conv.turns[i].user_text(), conv.turns[i + 1].content)
             for i in range(0, len(conv.turns) - 2, 2)]
    prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n"
                     for i, (q, r) in enumerate(pairs))
    prompt += f"[Round {len(pairs) + 1}]\n\n问：{conv.turns[-2].user_text()}\n\n答："
    return prompt + conv.turns[-1].content + eos


def internlm(conv: Conversation, eos: str) -> str:
    """internlm-chat-7b modeling_internlm.py build_inputs (v1.1), the last reply closed as
    the history's are."""
    prompt = f"<|System|>:{conv.system}\n" if conv.system else ""
    for i in range(0, len(conv.turns), 2):
        prompt += (f"<|User|>:{conv.turns[i].user_text()}\n"
                   f"<|Bot|>:{conv.turns[i + 1].content}<eoa>\n")
    return prompt


def moss(conv: Conversation, eos: str) -> str:
    """OpenLMLab/MOSS: meta_instruction + '<|Human|>: ...<eoh>\\n<|MOSS|>: ...<eom>\\n'."""
    from unitune.data.templates import _MOSS_SYSTEM

    text = (conv.system or _MOSS_SYSTEM) + "\n"
    for i in range(0, len(conv.turns), 2):
        text += (f"<|Human|>: {conv.turns[i].user_text()}<eoh>\n"
                 f"<|MOSS|>: {conv.turns[i + 1].content}<eom>\n")
    return text


def baichuan2(conv: Conversation, eos: str) -> str:
    """Baichuan2 fine-tune.py: system, then user token 195 (<reserved_106>) + question,
    assistant token 196 (<reserved_107>) + answer, one EOS at the end."""
    text = conv.system
    for i in range(0, len(conv.turns), 2):
        text += (f"<reserved_106>{conv.turns[i].user_text()}"
                 f"<reserved_107>{conv.turns[i + 1].content}")
    return text + eos


CODE_REFERENCES = {"alpaca": alpaca_cot, "vicuna": fastchat_vicuna, "chatglm2": chatglm2,
                   "internlm": internlm, "moss": moss, "baichuan2": baichuan2}


SHAPES = {**CONVERSATIONS, "input": Conversation.single("Sort.", "1 2 3", input="3 1 2")}


def defined(name: str, conv: Conversation) -> bool:
    """Whether the family's code has a form for this conversation (Alpaca-CoT's is
    single-turn without a system prompt; ChatGLM2's has no system prompt)."""
    if name == "alpaca":
        return len(conv.turns) == 2 and not conv.system
    return not (name == "chatglm2" and conv.system)


@pytest.mark.parametrize("name,shape", [(n, s) for n in CODE_REFERENCES for s in SHAPES
                                        if defined(n, SHAPES[s])])
def test_named_templates_render_their_familys_code(name, shape):
    conv = SHAPES[shape]
    tok = Specials("<s>", "</s>")
    assert get_template(name).render(conv, tok)[0] == CODE_REFERENCES[name](conv, "</s>")


def test_a_chat_template_that_drops_tools_or_refuses_an_example_drops_it(llama3_tokenizer):
    """The official Llama-3 template ignores tools and tool calls: training on it would teach
    an empty reply where the call belongs. Such examples, and ones a template refuses with an
    error, are dropped and counted, not kept or fatal."""
    rows, report = encode_conversations([TOOL_USE], llama3_tokenizer, get_template("tokenizer"),
                                        2048)
    assert rows == [] and "does not render the tools or tool calls (get_weather)" in \
        next(iter(report.dropped))
    tok = copy.copy(llama3_tokenizer)
    tok.chat_template = "{{ raise_exception('System role not supported') }}"
    rows, report = encode_conversations([CONVERSATIONS["system"]], tok,
                                        get_template("tokenizer"), 256)
    assert rows == [] and "refuses it: System role not supported" in next(iter(report.dropped))


def test_saved_chat_template_takes_openai_string_arguments(family_tokenizer):
    """Clients send earlier calls' arguments as JSON text: rendered as the object training
    saw, not as a quoted string."""
    saved = get_template("qwen").with_chat_template(family_tokenizer)
    as_text = TOOL_USE.messages()
    for call in as_text[1]["tool_calls"]:
        call["function"] = {**call["function"],
                            "arguments": json.dumps(call["function"]["arguments"],
                                                    ensure_ascii=False)}
    assert saved.apply_chat_template(as_text, tools=[WEATHER], tokenize=False) == \
        get_template("qwen").render(TOOL_USE, family_tokenizer)[0]
