"""The chat engine's other front ends as users meet them: `unitune chat` in a real terminal
(pexpect), `unitune predict` crashed and resumed, and tool calls read back from replies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unitune.data.schema import Conversation, Turn
from unitune.data.templates import TEMPLATES
from unitune.errors import UserError

CLI = [sys.executable, "-c", "from unitune.cli import main; raise SystemExit(main())"]


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "tokenizer"])
def test_tool_calls_are_read_back_from_a_rendered_reply(name):
    template = TEMPLATES[name]
    calls = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
             {"name": "add", "arguments": {"a": 1, "b": [2, 3]}}]
    for words in ("Let me check.", ""):
        reply = template._reply(words, calls)
        assert template.parse_reply(reply) == (words, calls), reply
    assert template.parse_reply("no call {here}") == ("no call {here}", [])


@pytest.mark.slow
def test_chat_in_a_real_terminal(chat_run):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(CLI[0], [*CLI[1:], "chat", str(chat_run), "--device", "cpu",
                                   "--max-new-tokens", "8"], encoding="utf-8", timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    child.expect("chatting with run")
    child.expect("> ")
    child.sendline("Count the letters.")
    child.expect("> ")  # a reply, then the prompt again
    child.sendline("/models")
    child.expect(r"\* run")
    child.expect("tiny-llama-test")
    child.sendline("/set temperature=0.7")
    child.expect(r"\(temperature=0.7\)")
    child.sendline("/set nonsense=1")
    child.expect("error: .*did you mean|error: .*expected KEY=VALUE")
    child.sendline("/model tiny-llama-test")
    child.expect("now talking to tiny-llama-test")
    # a long reply, stopped with Ctrl-C: the session goes on
    child.sendline("/set max_new_tokens=100000")
    child.expect("> ")
    child.sendline("/set do_sample=true")
    child.expect("> ")
    child.sendline("Tell me everything.")
    time.sleep(3)
    child.sendintr()
    child.expect(r"\(stopped\)|> ")
    child.sendline("/reset")
    child.expect(r"\(conversation cleared\)")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_predict_resumes_after_a_crash_without_redoing_a_line(chat_run, synth_data, tmp_path):
    data = tmp_path / "in.jsonl"
    rows = json.loads(synth_data["train"].read_text())
    rows = (rows * (120 // len(rows) + 1))[:120]  # (enough that a kill lands mid-way)
    data.write_text("".join(json.dumps({**r, "id": f"r{i}"}) + "\n" for i, r in
                            enumerate(rows)))
    clean = tmp_path / "clean.jsonl"
    args = ["--device", "cpu", "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]
    subprocess.run([*CLI, "predict", str(chat_run), str(data), str(clean), *args], check=True,
                   capture_output=True)
    expected = [json.loads(line) for line in clean.read_text().splitlines()]
    assert [e["index"] for e in expected] == list(range(120))
    assert [e["id"] for e in expected] == [f"r{i}" for i in range(120)]
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*CLI, "predict", str(chat_run), str(data), str(out), *args],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines())
                                      < 8):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(out.read_text().splitlines())
    assert 8 <= done < 120
    with out.open("a") as f:  # a torn line, as a crash mid-write leaves it
        f.write('{"index": 99, "predic')
    resumed = subprocess.run([*CLI, "predict", str(chat_run), str(data), str(out), *args],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} of 120 predictions already there" in resumed.stderr
    assert "records/s" in resumed.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    bad = subprocess.run([*CLI, "predict", str(chat_run), str(data), str(other), *args],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a prediction line" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_conversation_from_openai_messages():
    from unitune.data.readers import conversation_from_messages
    from unitune.errors import UserError

    conv = conversation_from_messages([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "hi"}])
    assert conv.system == "Be brief." and conv.turns == (Turn("user", "hi"),)
    assert isinstance(conv, Conversation)
    with pytest.raises(UserError, match="last message is the assistant"):
        conversation_from_messages([{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "yo"}])


def test_json_prefix_recognises_compact_json_objects():
    from unitune.infer.json_mode import JsonPrefix

    docs = ['{}', '{"a": 1}', '{"a": [1, 2.5, -3e+2, true, null], "b": {"c": "x\\"y\\u00e9"}}',
            '{"k": -0.5E-3, "l": [], "m": [{}]}']
    for doc in docs:
        assert json.loads(doc) is not None
        for cut in range(len(doc)):
            state = JsonPrefix.feed(JsonPrefix.START, doc[:cut])
            assert state is not None and not JsonPrefix.complete(state), doc[:cut]
        assert JsonPrefix.complete(JsonPrefix.feed(JsonPrefix.START, doc)), doc
    for bad in ['[1]', ' {}', '{"a" 1}', '{"a": 01}', '{"a": tru}', '{,}', '{"a": 1,}',
                '{"a": "\n"}', '{}x', '{"a":  1}', '{"a": 1.}', '{"a": -}', '{"a": [1 2]}',
                '{"a": "\\q"}']:
        assert JsonPrefix.feed(JsonPrefix.START, bad) is None, bad


@pytest.mark.slow
def test_json_mode_replies_are_json_objects(test_preset):
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding
    from unitune.infer.json_mode import JsonPrefix

    engine = Engine("tiny-llama-test", device="cpu")
    try:
        prompt = engine.render_chat("tiny-llama-test", [{"role": "user", "content": "JSON?"}])
        finished = []
        for seed in range(10):
            seq = engine.generate(Request("tiny-llama-test", prompt, Decoding(
                max_new_tokens=100, json_object=True, do_sample=True, seed=seed))).seqs[0]
            assert JsonPrefix.feed(JsonPrefix.START, seq.text) is not None, seq.text
            if seq.finish_reason == "stop":
                assert isinstance(json.loads(seq.text), dict)
                finished.append(seed)
    finally:
        engine.close()
    assert finished, "no reply closed its object within 100 tokens"


@pytest.mark.slow
def test_a_static_cache_decodes_the_same_tokens(chat_run):
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding

    replies = []
    for static in (False, True):
        with Engine(str(chat_run), device="cpu", static_cache=static) as engine:
            prompt = engine.render_chat("tiny-llama-test", [{"role": "user", "content": "hi"}])
            job = engine.generate(Request("tiny-llama-test", prompt, Decoding(
                max_new_tokens=12), top_logprobs=0, ignore_eos=True))
            replies.append((job.seqs[0].tokens, [e["logprob"] for e in job.seqs[0].logprobs]))
    assert replies[0][0] == replies[1][0] and len(replies[0][0]) == 12
    assert replies[0][1] == pytest.approx(replies[1][1], abs=1e-4)



def test_a_zero_budget_beside_others_takes_no_token(chat_run):
    from unitune.infer.generate import Decoding, Sequence, decode
    from unitune.run import open_model

    model, tok, _ = open_model(chat_run, device="cpu", log=lambda *a: None)
    ids = tok("count a b c =")["input_ids"]
    scored, other = decode(model, tok, [Sequence(ids, 0, top_logprobs=0), Sequence(ids, 5)],
                           Decoding(), [])
    assert scored.tokens == [] and scored.logprobs == [] and scored.finish_reason == "length"
    assert len(other.tokens) == 5


def test_a_default_budget_is_cut_to_the_context_and_an_exact_one_is_refused(test_preset):
    """A reply budget the user did not set exactly (chat, web, the API without max_tokens)
    is a cap: cut to what the context leaves after the prompt; the API's max_tokens is
    exact."""
    from unitune.infer.engine import Engine, PromptTooLong, Request
    from unitune.infer.generate import Decoding

    with Engine("tiny-llama-test", device="cpu") as engine:
        prompt = engine.render_chat(engine.base_id, [{"role": "user", "content": "a b c"}])
        room = engine.context - len(engine.tokenize(engine.base_id, prompt))
        budget = Decoding(max_new_tokens=engine.context)  # more than the context holds
        job = engine.generate(Request(engine.base_id, prompt, budget, ignore_eos=True))
        assert len(job.seqs[0].tokens) == room and job.seqs[0].finish_reason == "length"
        with pytest.raises(PromptTooLong, match=f"asks for {engine.context} more"):
            engine.submit(Request(engine.base_id, prompt, budget, exact_budget=True))
        with pytest.raises(PromptTooLong, match="the limit is"):  # no room at all
            engine.submit(Request(engine.base_id, "a " * 2 * engine.context, budget))


@pytest.mark.slow
def test_predict_writes_why_a_record_cannot_run_and_goes_on(chat_run, tmp_path):
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"instruction": "Count the letters.", "input": "a b",
                                 "output": "2"},
                                {"instruction": "Count the letters. " * 200, "output": "x"},
                                {"instruction": "Count the letters.", "input": "a",
                                 "output": "1"}]))
    out = tmp_path / "out.jsonl"
    done = subprocess.run([*CLI, "predict", str(chat_run), str(data), str(out), "--device",
                           "cpu", "--max-new-tokens", "4", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert "limit" in lines[1]["error"] and lines[1]["prediction"] is None
    assert "error" not in lines[0] and "error" not in lines[2]
    assert "1 records could not run" in done.stderr
    share = subprocess.run([*CLI, "web", str(chat_run), "--share"], capture_output=True,
                           text=True)
    assert share.returncode == 2 and "--share opens a public link" in share.stderr


def _oom_above(limit: int, decode):
    """``decode`` that runs out of GPU memory for batches of more than ``limit`` sequences,
    as a GPU would; the batch sizes it was given."""
    import torch

    sizes = []

    def run(model, tokenizer, seqs, *args, **kwargs):
        sizes.append(len(seqs))
        if len(seqs) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(model, tokenizer, seqs, *args, **kwargs)

    return run, sizes


def test_a_batch_out_of_gpu_memory_is_answered_in_halves(test_preset, monkeypatch):
    import unitune.infer.engine as engine_module
    import unitune.infer.generate as generate_module
    from unitune.infer.engine import Engine, Request
    from unitune.infer.generate import Decoding, generate_texts
    from unitune.run import open_model

    prompts = [f"count {' '.join('abcdef'[:k])} =" for k in range(1, 7)]
    decoding = Decoding(max_new_tokens=4)
    model, tok, _ = open_model("tiny-llama-test", device="cpu", log=lambda *a: None)
    expected = generate_texts(model, tok, prompts, decoding, batch_size=1)
    run, sizes = _oom_above(2, generate_module.decode)
    monkeypatch.setattr(generate_module, "decode", run)
    said = []
    assert generate_texts(model, tok, prompts, decoding, batch_size=6,
                          log=said.append) == expected
    assert sizes[:3] == [6, 3, 1] and said[-1] == "out of GPU memory: answering in batches of 1"

    run, sizes = _oom_above(2, generate_module.decode)
    monkeypatch.setattr(engine_module, "decode", run)
    lines = []
    with Engine("tiny-llama-test", device="cpu", log=lines.append) as engine:
        with engine._cv:  # (all six wait together, so the worker takes them as one batch)
            jobs = [engine.submit(Request("tiny-llama-test", p, decoding)) for p in prompts]
        texts = [job.result().seqs[0].text.strip() for job in jobs]
        assert texts == expected and sizes[0] == 6 and engine.max_batch <= 2
        assert any("out of GPU memory with 6 sequences in one batch" in x for x in lines)
        halved, engine.GROW_AFTER = engine.max_batch, 2
        for p in prompts[:2]:  # clean batches: the batch size grows back
            engine.generate(Request("tiny-llama-test", p, decoding))
        assert engine.max_batch == engine.stats["max_batch"] == 2 * halved
        one = engine.submit(Request("tiny-llama-test", prompts[0], decoding, n=3))
        with pytest.raises(UserError, match="out of GPU memory for this request alone .*3 "
                           "answers"):
            one.result()  # (one request cannot be made smaller)
