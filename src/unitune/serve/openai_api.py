"""The OpenAI-compatible HTTP API over the chat engine (FastAPI; ``unitune serve`` runs it
with uvicorn).

Owns the endpoints (``/health``, ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``), their request schemas (OpenAI's fields plus the engine's decoding
controls: ``top_k``, ``min_p``, ``repetition_penalty``, ``no_repeat_ngram_size``,
``num_beams``, ``preset``), the reply and streaming (server-sent events) formats with
log-probabilities, ``echo`` and usage counts, tool calls read from the reply, the API key, the
limits, and OpenAI-style error bodies: 400 bad values or unsupported parameters, 401 a missing
or wrong key, 404 an unknown model, 413 a prompt too long, 422 wrong types, 429 a full queue.
A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from unitune.errors import UserError, did_you_mean
from unitune.infer.engine import Engine, PromptTooLong, QueueFull, Request, UnknownModel
from unitune.infer.generate import Decoding, preset


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    # the engine's controls beyond OpenAI's (vLLM's names)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = None
    preset: str | None = Field(None, description="a named decoding preset: greedy, alpaca_cot")
    ignore_eos: bool = False
    # accepted for compatibility; anything but the neutral value is refused
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ChatBody(_Body):
    messages: list[dict]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error_body(status: int, message: str, param: str | None = None,
                kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _decoding(body: _Body, max_tokens: int, limit: int, json_object: bool = False
              ) -> Decoding:
    if body.presence_penalty or body.frequency_penalty:
        raise ApiError(400, "presence_penalty and frequency_penalty are not supported; use "
                       "repetition_penalty", "presence_penalty")
    if max_tokens < 0 or max_tokens > limit:
        raise ApiError(400, f"max_tokens must be between 0 and {limit}, got {max_tokens}",
                       "max_tokens")
    if not 1 <= body.n <= 16:
        raise ApiError(400, f"n must be between 1 and 16, got {body.n}", "n")
    base = preset(body.preset) if body.preset else Decoding(seed=None)
    values: dict[str, Any] = {"max_new_tokens": max_tokens, "json_object": json_object}
    if body.seed is not None:
        values["seed"] = body.seed
    for name in ("top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size",
                 "num_beams"):
        if getattr(body, name) is not None:
            values[name] = getattr(body, name)
    if body.temperature is not None:
        # OpenAI: temperature 0 is greedy; anything else samples
        values.update(do_sample=body.temperature > 0, temperature=body.temperature or 1.0)
    elif body.top_p is not None or body.top_k or body.min_p:
        values["do_sample"] = True
    try:
        return replace(base, **values)
    except UserError as exc:
        raise ApiError(400, str(exc)) from None


def _stops(body: _Body) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop sequences", "stop")
    return stops


def _text_parts(messages: list[dict]) -> list[dict]:
    """Messages whose content is a list of parts (OpenAI's ``[{"type": "text", ...}]``) as
    plain text; other kinds of part (images, audio) are refused."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            kinds = {part.get("type") if isinstance(part, dict) else type(part).__name__
                     for part in content}
            if kinds - {"text"}:
                raise ApiError(400, f"messages[{i}].content: only text parts are supported, "
                               f"got {sorted(map(str, kinds - {'text'}))}", "messages")
            message = {**message, "content": "".join(part.get("text", "") for part in content)}
        out.append(message)
    return out


def default_budget(max_tokens_limit: int, default_max_tokens: int | None) -> int:
    """A reply's budget when a request gives no ``max_tokens``: ``default_max_tokens``, else
    256, never over ``max_tokens_limit`` (checked before a model loads, too)."""
    if default_max_tokens is None:
        return min(256, max_tokens_limit)
    if default_max_tokens > max_tokens_limit:
        raise UserError(f"--default-max-tokens {default_max_tokens} is over "
                        f"--max-tokens-limit {max_tokens_limit}; lower it or raise the limit")
    return default_max_tokens


def build_app(engine: Engine, api_key: str | None = None, max_tokens_limit: int = 4096,
              default_max_tokens: int | None = None):
    default_max_tokens = default_budget(max_tokens_limit, default_max_tokens)
    app = FastAPI(title="unitune", version="1")
    tokenizer = engine.tokenizer

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse(_error_body(exc.status, exc.message, exc.param, exc.kind),
                            status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(_, exc: UserError):
        return JSONResponse(_error_body(400, str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ())[1:])
        if first["type"] == "json_invalid":
            return JSONResponse(_error_body(400, f"the body is not valid JSON: {first['msg']}"),
                                status_code=400)
        if first["type"] == "extra_forbidden":
            known = set(ChatBody.model_fields) | set(CompletionBody.model_fields)
            return JSONResponse(_error_body(
                400, f"unsupported parameter '{loc}'{did_you_mean(loc, known)}", loc),
                status_code=400)
        return JSONResponse(_error_body(422, f"{loc or 'body'}: {first['msg']}", loc or None),
                            status_code=422)

    @app.middleware("http")
    async def _auth(request: HttpRequest, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                what = "a wrong" if given else "no"
                return JSONResponse(_error_body(401, f"{what} API key: send 'Authorization: "
                                                     "Bearer <key>'", kind="authentication_error"),
                                    status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": [m["id"] for m in engine.models()], **engine.stats}

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": m["id"], "object": "model", "created": now, "owned_by": "unitune",
             "parent": m["parent"], "root": m["parent"] or m["id"]} for m in engine.models()]}

    def _submit(request: Request, loop, events: asyncio.Queue):
        try:
            return engine.submit(request, lambda ev: loop.call_soon_threadsafe(
                events.put_nowait, ev))
        except UnknownModel as exc:
            raise ApiError(404, str(exc), "model", "not_found_error") from None
        except QueueFull as exc:
            raise ApiError(429, str(exc), kind="rate_limit_error") from None
        except PromptTooLong as exc:
            raise ApiError(413, str(exc), "messages") from None
        except UserError as exc:
            raise ApiError(400, str(exc)) from None

    async def _collect(http: HttpRequest, job, events: asyncio.Queue) -> None:
        """Wait for the job to end; a client that goes away cancels it."""
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                if await http.is_disconnected():
                    job.cancel()
                    return
                continue
            if event[0] == "error":
                raise ApiError(500, str(event[1]), kind="server_error")
            if event[0] == "end":
                return

    def _token(token_id: int) -> str:
        return tokenizer.decode([token_id])

    def _chat_logprobs(entries: list[dict]) -> dict:
        def one(tid, lp):
            text = _token(tid)
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        return {"content": [{**one(e["token"], e["logprob"]), "top_logprobs": [
            one(t, v) for t, v in e.get("top", {}).items()]} for e in entries]}

    def _message(model_id: str, text: str, with_tools: bool) -> tuple[dict, bool]:
        if with_tools:
            words, calls = engine.template(model_id).parse_reply(text)
            if calls:
                return {"role": "assistant", "content": words or None, "tool_calls": [
                    {"id": f"call_{secrets.token_hex(6)}", "type": "function",
                     "function": {"name": c["name"],
                                  "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                    for c in calls]}, True
        return {"role": "assistant", "content": text}, False

    def _usage(job) -> dict:
        done = sum(len(s.tokens) for s in job.seqs)
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": done,
                "total_tokens": len(job.prompt_ids) + done}

    def _sse(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, http: HttpRequest):
        kind = (body.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object"):
            raise ApiError(400, f"response_format {kind!r} is not supported (use 'text' or "
                           "'json_object')", "response_format")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20", "top_logprobs")
        max_tokens = next((t for t in (body.max_completion_tokens, body.max_tokens)
                           if t is not None), default_max_tokens)
        decoding = _decoding(body, max_tokens, max_tokens_limit, kind == "json_object")
        if body.stream and decoding.num_beams > 1:
            raise ApiError(400, "stream does not work with beam search (num_beams > 1)",
                           "num_beams")
        try:
            prompt = engine.render_chat(body.model, _text_parts(body.messages),
                                        body.tools if body.tool_choice != "none" else None)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), "model", "not_found_error") from None
        except UserError as exc:
            raise ApiError(400, str(exc), "messages") from None
        request = Request(body.model, prompt, decoding, body.n, _stops(body),
                          (body.top_logprobs or 0) if body.logprobs else None,
                          ignore_eos=body.ignore_eos, stream=body.stream,
                          exact_budget=body.max_completion_tokens is not None
                          or body.max_tokens is not None)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = _submit(request, loop, events)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "created": created, "model": body.model}
        with_tools = bool(body.tools) and body.tool_choice != "none"
        if not body.stream:
            await _collect(http, job, events)
            choices = []
            for i, seq in enumerate(job.seqs):
                message, called = _message(body.model, seq.text, with_tools)
                choices.append({"index": i, "message": message,
                                "logprobs": _chat_logprobs(seq.logprobs) if body.logprobs
                                else None,
                                "finish_reason": "tool_calls" if called else seq.finish_reason})
            return {**head, "object": "chat.completion", "choices": choices,
                    "usage": _usage(job)}

        async def stream():
            chunk = {**head, "object": "chat.completion.chunk"}
            try:
                for i in range(body.n):
                    yield _sse({**chunk, "choices": [{"index": i, "delta": {
                        "role": "assistant", "content": ""}, "finish_reason": None}]})
                while True:
                    event = await events.get()
                    if event[0] == "text" and not with_tools:
                        _, i, delta, lps = event
                        yield _sse({**chunk, "choices": [{
                            "index": i, "delta": {"content": delta}, "finish_reason": None,
                            "logprobs": _chat_logprobs(lps) if body.logprobs else None}]})
                    elif event[0] == "done":
                        _, i, reason = event
                        if with_tools:  # a reply that may call tools is sent once parsed
                            message, called = _message(body.model, job.seqs[i].text, True)
                            delta = {"content": message["content"]}
                            if called:
                                delta["tool_calls"] = [{**c, "index": k} for k, c in
                                                       enumerate(message["tool_calls"])]
                                reason = "tool_calls"
                            yield _sse({**chunk, "choices": [{
                                "index": i, "delta": delta, "finish_reason": None,
                                "logprobs": _chat_logprobs(job.seqs[i].logprobs)
                                if body.logprobs else None}]})
                        yield _sse({**chunk, "choices": [{
                            "index": i, "delta": {}, "finish_reason": reason}]})
                    elif event[0] == "error":
                        yield _sse(_error_body(500, str(event[1]), kind="server_error"))
                        break
                    else:
                        if (body.stream_options or {}).get("include_usage"):
                            yield _sse({**chunk, "choices": [], "usage": _usage(job)})
                        break
                yield _sse("[DONE]")
            finally:
                job.cancel()  # a no-op once it has ended; stops it if the client went away

        return StreamingResponse(stream(), media_type="text/event-stream")

    def _prompts(body: CompletionBody) -> list[str | list[int]]:
        p = body.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]
        return list(p)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HttpRequest):
        if body.suffix:
            raise ApiError(400, "suffix is not supported", "suffix")
        if body.logprobs is not None and not 0 <= body.logprobs <= 20:
            raise ApiError(400, "logprobs must be between 0 and 20", "logprobs")
        max_tokens = default_max_tokens if body.max_tokens is None else body.max_tokens
        decoding = _decoding(body, max_tokens, max_tokens_limit)
        try:
            engine.template(body.model)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), "model", "not_found_error") from None
        if body.stream and (len(_prompts(body)) > 1 or decoding.num_beams > 1):
            raise ApiError(400, "stream takes one prompt and no beam search", "prompt")
        prompts = _prompts(body)
        if not prompts or any(not p for p in prompts):
            raise ApiError(400, "the prompt is empty", "prompt")
        loop, jobs = asyncio.get_running_loop(), []
        try:  # one queue per prompt; a failure cancels the prompts already running
            for prompt in prompts:
                request = Request(body.model, prompt if isinstance(prompt, str) else "",
                                  decoding, body.n, _stops(body), body.logprobs,
                                  echo_logprobs=body.echo and body.logprobs is not None,
                                  prompt_ids=None if isinstance(prompt, str) else list(prompt),
                                  ignore_eos=body.ignore_eos, stream=body.stream,
                                  exact_budget=body.max_tokens is not None)
                events = asyncio.Queue()
                jobs.append((_submit(request, loop, events), events))
            if not body.stream:
                for job, events in jobs:
                    await _collect(http, job, events)
        except BaseException:
            for job, _ in jobs:
                job.cancel()
            raise
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "created": created, "model": body.model}

        def logprobs_of(ids: list[int], entries: list[dict | None], offset: int
                        ) -> dict | None:
            """OpenAI's completion log-probabilities (a prompt's first token has none)."""
            if body.logprobs is None:
                return None
            tokens = [_token(t) for t in ids]
            offsets = []
            for t in tokens:
                offsets.append(offset)
                offset += len(t)
            return {"tokens": tokens,
                    "token_logprobs": [e["logprob"] if e else None for e in entries],
                    "top_logprobs": [{_token(t): v for t, v in e.get("top", {}).items()}
                                     if e else None for e in entries],
                    "text_offset": offsets}

        def scored(job, seq) -> tuple[list[int], list[dict | None]]:
            """(token ids, their entries): the prompt's when echoed, then the reply's."""
            ids = [e["token"] for e in seq.logprobs]
            if not body.echo:
                return ids, list(seq.logprobs)
            prompt = job.prompt_logprobs or [None] * len(job.prompt_ids)
            return job.prompt_ids + ids, prompt + seq.logprobs

        def prompt_text(job) -> str:
            return job.request.prompt or tokenizer.decode(job.prompt_ids)

        if not body.stream:
            choices = []
            for job, _ in jobs:
                for seq in job.seqs:
                    prefix = prompt_text(job) if body.echo else ""
                    first = 0 if body.echo else len(prompt_text(job))
                    choices.append({"index": len(choices), "text": prefix + seq.text,
                                    "logprobs": logprobs_of(*scored(job, seq), first),
                                    "finish_reason": seq.finish_reason})
            usage = [_usage(j) for j, _ in jobs]
            return {**head, "object": "text_completion", "choices": choices, "usage": {
                k: sum(u[k] for u in usage) for k in usage[0]}}

        job, events = jobs[0]

        async def stream():
            chunk = {**head, "object": "text_completion"}
            offsets = [len(prompt_text(job))] * body.n  # (the reply follows the prompt)
            try:
                if body.echo:
                    for i in range(body.n):
                        yield _sse({**chunk, "choices": [{"index": i, "text": prompt_text(job),
                                                          "finish_reason": None}]})
                while True:
                    event = await events.get()
                    if event[0] == "text":
                        _, i, delta, lps = event
                        yield _sse({**chunk, "choices": [{
                            "index": i, "text": delta, "finish_reason": None,
                            "logprobs": logprobs_of([e["token"] for e in lps], lps,
                                                    offsets[i])}]})
                        offsets[i] += len(delta)
                    elif event[0] == "done":
                        yield _sse({**chunk, "choices": [{"index": event[1], "text": "",
                                                          "finish_reason": event[2]}]})
                    elif event[0] == "error":
                        yield _sse(_error_body(500, str(event[1]), kind="server_error"))
                        break
                    else:
                        break
                yield _sse("[DONE]")
            finally:
                job.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app

