"""The OpenAI-compatible server, started as users start it (`unitune serve` on 127.0.0.1) and
driven with the official `openai` client: models, chat and completions (streaming, n, stop,
seed, logprobs, echo), several adapters at once, greedy logprobs equal to in-process PEFT,
every bad-input case and the 429 path, and cancellation on disconnect."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
import torch

pytestmark = pytest.mark.slow

KEY = "sk-unitune-test"
USER = [{"role": "user", "content": "Count the letters."}]


@pytest.fixture(scope="module")
def adapters(small_lora):
    """Two LoRA runs of one base, 'alpha' and 'beta' (different seeds), in one folder."""
    alpha, beta = small_lora("alpha", 0), small_lora("beta", 1)
    root = alpha.parent
    beta.rename(root / "beta")
    return root


@pytest.fixture(scope="module")
def server(adapters, start_server):
    proc, url = start_server([str(adapters / "alpha"), "--adapter", f"beta={adapters / 'beta'}",
                              "--adapter",
                              f"mix=0.5*{adapters / 'alpha'} + 0.5*{adapters / 'beta'}",
                              "--api-key", KEY, "--max-tokens-limit", "512"])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def reference(adapters, run: str, prompt_messages: list[dict], n_tokens: int):
    """Greedy ids and their log-probabilities from stock PEFT, in-process."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from unitune.data.encode import tokenize_ids
    from unitune.data.readers import conversation_from_messages
    from unitune.data.templates import load_template
    from unitune.models.loading import load_tokenizer

    folder = adapters / run
    tok, template = load_tokenizer(str(folder)), load_template(folder)
    base = AutoModelForCausalLM.from_pretrained(json.loads((folder / "run.json").read_text())[
        "base_model_path"])
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    prompt = template.render_prompt(conversation_from_messages(prompt_messages), tok)
    ids = torch.tensor([tokenize_ids([prompt], tok, template.add_special_tokens)[0]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=n_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             eos_token_id=None, pad_token_id=tok.pad_token_id)
    new = out.sequences[0, ids.shape[1]:].tolist()
    lps = [torch.log_softmax(logit[0].float(), -1)[t].item()
           for logit, t in zip(out.logits, new, strict=True)]
    return tok.decode(new, skip_special_tokens=True), lps


def test_models_lists_the_base_and_every_adapter(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-llama-test", "alpha", "beta", "mix"}
    assert models["beta"].model_extra["parent"] == "tiny-llama-test"
    assert models["tiny-llama-test"].model_extra["parent"] is None


def test_greedy_logprobs_equal_stock_peft(client, adapters):
    r = client.chat.completions.create(model="beta", messages=USER, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    got = [t.logprob for t in choice.logprobs.content]
    text, expected = reference(adapters, "beta", USER, len(got))
    assert choice.message.content == text[:len(choice.message.content)]
    assert got == pytest.approx(expected[:len(got)], abs=1e-4)
    for entry in choice.logprobs.content:  # the chosen greedy token is the top alternative
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert len(entry.top_logprobs) == 3
    assert r.usage.completion_tokens == len(got) and r.usage.prompt_tokens > 0


def test_streaming_gives_the_same_text_and_n_choices(client):
    plain = client.chat.completions.create(model="alpha", messages=USER, max_tokens=12,
                                           temperature=0)
    stream = client.chat.completions.create(model="alpha", messages=USER, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason and usage.total_tokens > 0
    r = client.chat.completions.create(model="alpha", messages=USER, max_tokens=8, n=3,
                                       temperature=1.0, seed=7)
    again = client.chat.completions.create(model="alpha", messages=USER, max_tokens=8, n=3,
                                           temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]


def test_adapters_differ_and_concurrent_mixed_batches_match_sequential(client):
    def ask(model):
        r = client.chat.completions.create(model=model, messages=USER, max_tokens=8,
                                           temperature=0, logprobs=True)
        return r.choices[0].message.content, [t.logprob for t in r.choices[0].logprobs.content]

    order = ["tiny-llama-test", "alpha", "beta", "mix"] * 3
    alone = {m: ask(m) for m in order[:4]}
    assert len({tuple(lp) for _, lp in alone.values()}) == 4  # four different models
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, order))
    for model, (text, lps) in zip(order, together, strict=True):
        assert text == alone[model][0]
        assert lps == pytest.approx(alone[model][1], abs=1e-4)


def test_completions_echo_scores_the_prompt(client, adapters, server):
    r = client.completions.create(model="alpha", prompt="count a b c =", max_tokens=0,
                                  echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "count a b c =" and lp.token_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:]) and len(lp.tokens) == len(lp.text_offset)
    # the same prompt as token ids (what lm-evaluation-harness sends), one generated token
    from unitune.models.loading import load_tokenizer

    ids = load_tokenizer(str(adapters / "alpha"))("count a b c =")["input_ids"]
    r2 = client.completions.create(model="alpha", prompt=ids, max_tokens=1, echo=True,
                                   logprobs=1, temperature=0)
    lp2 = r2.choices[0].logprobs
    assert lp2.token_logprobs[:len(ids)] == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert len(lp2.tokens) == len(ids) + 1
    r3 = client.completions.create(model="alpha", prompt=["count a b =", "max 1 2 ="],
                                   max_tokens=4, temperature=0, stop=["\n"])
    assert len(r3.choices) == 2 and all("\n" not in c.text for c in r3.choices)


def test_stop_strings_end_the_reply(client):
    ask = dict(model="tiny-llama-test", messages=USER, max_tokens=24, temperature=0,
               extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**ask)
    assert full.choices[0].finish_reason == "length"
    text = full.choices[0].message.content
    cut = text[len(text) // 2:len(text) // 2 + 2]
    r = client.chat.completions.create(**ask, stop=[cut])
    assert r.choices[0].message.content == text[:text.index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_without_max_tokens_a_reply_may_fill_the_context(client):
    """OpenAI's default: no max_tokens, no limit but the context (the preset has 256
    positions, less than the server's default budget plus the prompt)."""
    r = client.chat.completions.create(model="alpha", messages=USER, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == 256


def test_bad_input_gets_the_right_status(server, client):
    import openai

    url, completions = f"{server}/v1/chat/completions", f"{server}/v1/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "alpha", "messages": USER, "max_tokens": 2}
    cases = [
        (httpx.post(url, content=b"{not json", headers={**auth, "content-type":
                                                        "application/json"}), 400, "not valid"),
        (httpx.post(url, json={**body, "max_tokens": "many"}, headers=auth), 422, "max_tokens"),
        (httpx.post(url, json={**body, "temprature": 0.5}, headers=auth), 400, "temperature"),
        (httpx.post(url, json={**body, "max_tokens": -3}, headers=auth), 400, "max_tokens"),
        (httpx.post(url, json={**body, "max_tokens": 10**6}, headers=auth), 400, "max_tokens"),
        (httpx.post(url, json={**body, "model": "gamma"}, headers=auth), 404, "not served"),
        (httpx.post(url, json=body), 401, "API key"),
        (httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401, "API key"),
        (httpx.post(url, json={**body, "messages": [{"role": "user", "content": "a " * 4000}]},
                    headers=auth), 413, "limit"),
        (httpx.post(url, json={**body, "messages": [{"role": "assistant", "content": "x"}]},
                    headers=auth), 400, "messages"),
        (httpx.post(url, json={**body, "frequency_penalty": 1.0}, headers=auth), 400,
         "repetition_penalty"),
        (httpx.post(url, json={**body, "response_format": {"type": "json_schema"}},
                    headers=auth), 400, "response_format"),
        (httpx.post(url, json={**body, "preset": "fastest"}, headers=auth), 400, "preset"),
        (httpx.post(url, json={**body, "seed": 2**64}, headers=auth), 400, "seed"),
        (httpx.post(url, json={**body, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, headers=auth), 400,
         "only text parts"),
        (httpx.post(completions, json={"model": "alpha", "prompt": [5, 999999]},
                    headers=auth), 400, "outside the vocabulary"),
        (httpx.post(completions, json={"model": "alpha", "prompt": []}, headers=auth), 400,
         "empty"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (status, response.text)
        error = response.json()["error"]
        assert words in error["message"] and error["type"], error
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gamma", messages=USER)
    assert client.chat.completions.create(model="alpha", messages=USER, max_tokens=2).choices
    # text parts, and beam search beside mixed-adapter batches, work
    parts = [{"role": "user", "content": [{"type": "text", "text": "Count the letters."}]}]
    assert client.chat.completions.create(model="alpha", messages=parts, max_tokens=2,
                                          temperature=0).choices[0].message.content == \
        client.chat.completions.create(model="alpha", messages=USER, max_tokens=2,
                                       temperature=0).choices[0].message.content
    beams = client.chat.completions.create(model="beta", messages=USER, max_tokens=4,
                                           extra_body={"num_beams": 2})
    assert beams.choices[0].finish_reason in ("stop", "length")


def test_a_full_queue_answers_429_and_the_server_keeps_serving(adapters, start_server):
    proc, base = start_server([str(adapters / "alpha"), "--max-queue", "1", "--max-batch", "1"])
    try:
        url = f"{base}/v1/chat/completions"
        body = {"model": "alpha", "messages": USER, "max_tokens": 64, "temperature": 0}
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: httpx.post(url, json=body, timeout=120).status_code,
                                  range(16)))
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        assert httpx.post(url, json=body, timeout=120).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_client_that_disconnects_cancels_its_generation(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = httpx.get(f"{server}/health").json()
    body = {"model": "tiny-llama-test", "messages": USER, "max_tokens": 150, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=auth,
                      timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
    deadline = time.time() + 30
    while time.time() < deadline:
        after = httpx.get(f"{server}/health").json()
        if after["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.2)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < 150


def test_json_mode_through_the_api(client):
    from unitune.infer.json_mode import JsonPrefix

    r = client.chat.completions.create(model="tiny-llama-test", messages=USER, max_tokens=40,
                                       temperature=1.0, seed=3,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text.startswith("{") and JsonPrefix.feed(JsonPrefix.START, text) is not None
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
