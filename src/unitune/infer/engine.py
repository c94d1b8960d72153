"""The chat engine: one model (a base model or a run) with any number of adapters of that base,
answering requests from the terminal chat, batch prediction, the HTTP API and the web UI.

Owns
- opening the model through the run module (a run reopens as trained) and loading further
  adapters of the same base by name (PEFT's multi-adapter support), each served with its own
  template; an adapter may also be a module-arithmetic expression, composed at start;
- rendering chat messages (and tools) through the served model's template, and reading tool
  calls back out of a reply;
- dynamic batching: requests wait in a bounded queue; one worker thread takes every waiting
  request that can share a batch (same decoding controls; the same adapter, or any LoRA
  adapters at once through PEFT's mixed-adapter batches) and decodes them together through
  ``generate.decode``; text streams to each request's sink as it is produced, and a
  cancelled request stops using compute at the next token. A batch that runs out of GPU
  memory is queued again with the batch size halved (it grows back after clean batches); a
  single request that does not fit fails with that reason (``TooLarge``).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from unitune.data.templates import Template
from unitune.errors import UserError
from unitune.infer.generate import (
    Decoding,
    Sequence,
    decode,
    eos_ids,
    model_eos_ids,
    prompt_logprobs,
    smaller_batch,
    split_stops,
)
from unitune.models.rope import context_length


class QueueFull(UserError):
    """More requests are waiting than the engine accepts (HTTP 429)."""


class TooLarge(UserError):
    """A request that does not fit in GPU memory even alone."""


class UnknownModel(UserError):
    """A request names a model the engine does not serve (HTTP 404)."""


class PromptTooLong(UserError):
    """A prompt (plus its token budget) exceeds what the model or the server accepts (413)."""


@dataclass
class Request:
    """One generation request: ``prompt`` is rendered text; ``n`` sequences are generated."""

    model: str
    prompt: str
    decoding: Decoding
    n: int = 1
    stops: list[str] = field(default_factory=list)
    top_logprobs: int | None = None
    echo_logprobs: bool = False  # also score the prompt (its tokens' log-probabilities)
    prompt_ids: list[int] | None = None  # the prompt as token ids instead of text
    ignore_eos: bool = False  # generate the whole budget (end-of-turn markers included)
    stream: bool = False  # deliver text as it is generated ("text" events), not only at the end
    # max_new_tokens exactly as the client asked (the API's max_tokens): a prompt that leaves
    # less room is refused; otherwise it is a cap, cut to what the context leaves
    exact_budget: bool = False


class Job:
    """A submitted request: its sequences, and the events its consumer reads, in order:
    ``("text", index, delta, logprobs)`` (streamed requests only), ``("done", index,
    finish_reason)``,
    ``("error", exception)`` and finally ``("end",)``."""

    def __init__(self, request: Request, prompt_ids: list[int], stops: list[str],
                 stop_ids: list[int], sink: Callable[[tuple], None] | None):
        self.request, self.prompt_ids, self.stop_ids = request, prompt_ids, stop_ids
        self._cancelled = threading.Event()
        self._events: queue.Queue | None = None
        if sink is None:
            self._events = queue.Queue()
            sink = self._events.put
        self.sink, self._stops = sink, stops
        self.restart()

    def restart(self) -> None:
        """Fresh sequences: nothing generated yet (a request queued again)."""
        self.seqs = [Sequence(self.prompt_ids, self.request.decoding.max_new_tokens,
                              self._stops, self.request.top_logprobs,
                              on_text=self._text_sink(i) if self.request.stream else None,
                              cancelled=self._cancelled.is_set)
                     for i in range(self.request.n)]
        self.prompt_logprobs: list[dict | None] | None = None

    def _text_sink(self, index: int):
        return lambda delta, logprobs: self.sink(("text", index, delta, logprobs))

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self) -> Iterator[tuple]:
        """The events, blocking (for a job submitted without a sink)."""
        assert self._events is not None, "this job delivers its events to its sink"
        while True:
            event = self._events.get()
            if event[0] == "error":
                raise event[1]
            yield event
            if event[0] == "end":
                return

    def result(self) -> Job:
        """Wait for the job to finish (for a job submitted without a sink)."""
        for _ in self.events():
            pass
        return self


class Engine:
    """Serves ``target`` (a base model or a run) and ``adapters`` (name -> run folder or
    module-arithmetic expression over runs) of the same base."""

    def __init__(self, target: str, adapters: dict[str, str] | None = None,
                 device: str = "auto", dtype: str = "auto", template: str | None = None,
                 trust_remote_code: bool = False, max_batch: int = 32, max_queue: int = 256,
                 max_prompt_tokens: int | None = None, batch_window_s: float = 0.01,
                 static_cache: bool = False, rope_scaling: dict | None = None, log=print):
        from unitune.run import is_run, open_model, read_finished

        self.max_batch, self.max_queue, self.log = max_batch, max_queue, log
        self._max_batch_limit, self._clean_batches = max_batch, 0
        self.static_cache = static_cache
        self._scratch: list[Path] = []
        self.model, self.tokenizer, self.default_template = open_model(
            target, device=device, dtype=dtype, template=template,
            trust_remote_code=trust_remote_code, log=log, progress=False,
            rope_scaling=rope_scaling)
        folder = Path(target)
        self.templates: dict[str, Template] = {}
        self.parents: dict[str, str | None] = {}
        self.adapter_of: dict[str, str | None] = {}  # model id -> PEFT adapter name
        record = read_finished(folder) if is_run(folder) else None
        self._base_path = None  # where the served base's weights are (to match adapters)
        if record is not None and hasattr(self.model, "peft_config"):  # the base and the run
            self.base_id, self._base_path = record.base_model, record.base_model_path
            self._add(self.base_id, None, None, self.default_template)
            self._add(folder.name, "default", self.base_id, self.default_template)
        else:  # a base model, or a run that is a model of its own (full, merged, bottleneck)
            self.base_id = folder.name if record else str(target)
            self._base_path = None if record else self.model.name_or_path
            self._add(self.base_id, None, None, self.default_template)
            if adapters and record:
                raise UserError(f"{target} is a {record.method} run, not a base "
                                "with an adapter; serve further adapters beside their base "
                                "model or an adapter run")
        try:
            for name, source in (adapters or {}).items():
                self._load_adapter(name, source, trust_remote_code)
        except BaseException:
            for folder in self._scratch:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        self.mixed = bool(self.adapters) and all(
            getattr(c, "peft_type", None) == "LORA" and not getattr(c, "use_dora", False)
            for c in self.model.peft_config.values())
        self.context = max_prompt_tokens or context_length(self.model.config)
        self._end_cache: dict[str, tuple[list[int], list[str]]] = {}
        self._model_eos = set(model_eos_ids(self.model, self.tokenizer))
        self.counts = {"requests": 0, "cancelled": 0, "generated_tokens": 0, "batches": 0}
        self.batch_window_s, self._last_batch = batch_window_s, 0
        self._pending: list[Job] = []
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="unitune-engine", daemon=True)
        self._worker.start()

    @property
    def stats(self) -> dict:
        """What it has done, and the batch size it uses now."""
        return {**self.counts, "max_batch": self.max_batch}

    # --- models and adapters ------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return [m for m, a in self.adapter_of.items() if a is not None]

    def _add(self, model_id: str, adapter: str | None, parent: str | None,
             template: Template) -> None:
        if model_id in self.parents:
            raise UserError(f"model name '{model_id}' is given twice")
        self.parents[model_id], self.adapter_of[model_id] = parent, adapter
        self.templates[model_id] = template

    def _load_adapter(self, name: str, source: str, trust_remote_code: bool) -> None:
        from peft import PeftModel

        from unitune import methods
        from unitune.data.templates import load_template
        from unitune.run import is_run, read_finished

        folder = Path(source).expanduser()
        if not is_run(folder):  # a module-arithmetic expression, composed now
            from unitune.compose.compose import compose

            scratch = Path(tempfile.mkdtemp(prefix=f"unitune-{name}-"))
            self._scratch.append(scratch)
            folder = compose(source, scratch / name, log=self.log,
                             trust_remote_code=trust_remote_code)
        record = read_finished(folder)
        method = methods.get(record.method)
        if method.whole_model or not method.native_checkpoints:
            raise UserError(f"adapter '{name}': {folder} is a {record.method} run; only PEFT "
                            f"adapters are served beside a base (serve it alone: `unitune serve "
                            f"{folder}`)")
        same_path = self._base_path is not None and record.base_model_path is not None and \
            Path(record.base_model_path).resolve() == Path(self._base_path).resolve()
        if record.base_model != self.base_id and not same_path:
            raise UserError(f"adapter '{name}': {folder} was trained on {record.base_model}, "
                            f"not on the served base {self.base_id}")
        try:
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder),
                                                       adapter_name=name)
        except ValueError as exc:  # e.g. prompt learning beside LoRA
            raise UserError(f"adapter '{name}': PEFT cannot load {folder} beside the others: "
                            f"{str(exc).splitlines()[0]}") from None
        self.model.eval()
        self._add(name, name, self.base_id, load_template(folder))

    def _ends(self, model_id: str) -> tuple[list[int], list[str]]:
        """(ids, strings) that end a reply of ``model_id``: the model's EOS and its template's
        end-of-turn markers, tokenised once per model."""
        if model_id not in self._end_cache:
            template = self.template(model_id)
            self._end_cache[model_id] = eos_ids(self.model, self.tokenizer,
                                                template.stop_strings(self.tokenizer))
        return self._end_cache[model_id]

    def models(self) -> list[dict]:
        return [{"id": m, "parent": p} for m, p in self.parents.items()]

    def template(self, model_id: str) -> Template:
        if model_id not in self.templates:
            from unitune.errors import did_you_mean

            raise UnknownModel(f"model '{model_id}' is not served"
                               f"{did_you_mean(model_id, self.templates)}; served: "
                               f"{', '.join(self.templates)}")
        return self.templates[model_id]

    # --- prompts --------------------------------------------------------------------------------

    def render_chat(self, model_id: str, messages: list[dict],
                    tools: list[dict] | None = None) -> str:
        """The prompt for the next assistant reply, rendered through the model's template."""
        from unitune.data.readers import conversation_from_messages

        conv = conversation_from_messages(messages, tools, "messages")
        return self.template(model_id).render_prompt(conv, self.tokenizer)

    def tokenize(self, model_id: str, prompt: str) -> list[int]:
        from unitune.infer.generate import _tokenize

        return _tokenize(self.model, self.tokenizer, [prompt],
                         self.template(model_id).add_special_tokens)[0]

    # --- requests -------------------------------------------------------------------------------

    def submit(self, request: Request, sink: Callable[[tuple], None] | None = None) -> Job:
        """Queue a request. ``sink(event)`` receives its events (from the worker thread);
        without one, read them from ``job.events()`` or wait with ``job.result()``."""
        self.template(request.model)  # an unknown model fails before anything else
        if request.n < 1:
            raise UserError(f"n must be >= 1, got {request.n}")
        if request.decoding.num_beams > 1 and request.n > 1:
            raise UserError("n > 1 needs sampling, not beam search (num_beams > 1)")
        if request.prompt_ids is not None:
            ids = request.prompt_ids
            vocab = self.model.get_input_embeddings().weight.shape[0]
            bad = next((t for t in ids if not isinstance(t, int) or not 0 <= t < vocab), None)
            if bad is not None:
                raise UserError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        else:
            ids = self.tokenize(request.model, request.prompt)
        if not ids:
            raise UserError("the prompt is empty")
        if request.decoding.json_object and request.ignore_eos:
            raise UserError("JSON mode ends the reply when the object closes; it cannot take "
                            "ignore_eos")
        room = self.context - len(ids) if self.context else request.decoding.max_new_tokens
        if request.decoding.max_new_tokens > room:
            if request.exact_budget or room < 1:
                raise PromptTooLong(f"the prompt has {len(ids)} tokens and asks for "
                                    f"{request.decoding.max_new_tokens} more; the limit is "
                                    f"{self.context} tokens in all")
            request = replace(request, decoding=replace(request.decoding,
                                                        max_new_tokens=room))
        end_ids, strings = ([], []) if request.ignore_eos else self._ends(request.model)
        user_ids = split_stops(self.tokenizer, request.stops)[0] if request.stops else []
        if request.ignore_eos:
            user_ids = [i for i in user_ids if i not in self._model_eos]
        stop_ids = list(dict.fromkeys(end_ids + user_ids))
        stops = list(dict.fromkeys(strings + [s for s in request.stops if s]))
        job = Job(request, ids, stops, stop_ids, sink)
        with self._cv:
            if self._closed:
                raise UserError("the engine is closed")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (the limit is "
                                f"{self.max_queue}); retry later")
            self._pending.append(job)
            self.counts["requests"] += 1
            self._cv.notify()
        return job

    def generate(self, request: Request) -> Job:
        """Submit and wait: the finished job (its ``seqs`` hold text, tokens, logprobs)."""
        return self.submit(request).result()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cv.notify_all()
        for job in pending:  # nobody waits forever on a request that will not run
            _deliver(job, ("error", UserError("the engine closed before this request ran")))
            _deliver(job, ("end",))
        self._worker.join(timeout=30)
        for folder in self._scratch:
            shutil.rmtree(folder, ignore_errors=True)

    # --- the worker -----------------------------------------------------------------------------

    def _mixed(self, decoding: Decoding) -> bool:
        """Whether a batch may mix adapters (PEFT's ``adapter_names``: LoRA only, and not with
        beam search, whose rows PEFT cannot match to names)."""
        return self.mixed and decoding.num_beams == 1

    def _key(self, job: Job) -> tuple:
        adapter = None if self._mixed(job.request.decoding) else job.request.model
        return (job.request.decoding.batch_key, tuple(job.stop_ids), adapter)

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            # under concurrent load, give the clients whose requests just ended a moment to
            # send their next ones, so they join this batch instead of waiting for the next
            deadline = time.monotonic() + self.batch_window_s
            while self._last_batch > 1 and sum(j.request.n for j in self._pending) < \
                    self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            key, batch, rest, rows = self._key(self._pending[0]), [], [], 0
            for job in self._pending:
                if self._key(job) == key and (not batch or rows + job.request.n <=
                                              self.max_batch):
                    batch.append(job)
                    rows += job.request.n
                else:
                    rest.append(job)
            self._pending = rest
            self._last_batch = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.cancelled]
            for job in batch:
                if job.cancelled:
                    self.counts["cancelled"] += 1
                    _deliver(job, ("end",))
            if not live:
                continue
            try:
                self._run(live)
            except Exception as exc:  # the engine keeps serving; the requests learn why
                if _out_of_memory(exc) and self._retry_smaller(live):
                    continue
                for job in live:
                    why = exc if isinstance(exc, UserError) else TooLarge(
                        f"out of GPU memory for this request alone ({len(job.prompt_ids)} "
                        f"prompt tokens + {job.request.decoding.max_new_tokens} new, "
                        f"{job.request.n} answers): shorten it or ask for fewer tokens or "
                        "answers") if _out_of_memory(exc) else UserError(
                        f"generation failed: {type(exc).__name__}: {exc}")
                    _deliver(job, ("error", why))
                    _deliver(job, ("end",))
                continue
            self.counts["batches"] += 1
            self._grow_back()
            for job in live:
                for i, seq in enumerate(job.seqs):
                    self.counts["generated_tokens"] += len(seq.tokens)
                    _deliver(job, ("done", i, seq.finish_reason))
                self.counts["cancelled"] += any(s.finish_reason == "cancelled" for s in job.seqs)
                _deliver(job, ("end",))

    def _retry_smaller(self, jobs: list[Job]) -> bool:
        """After a batch ran out of GPU memory: halve ``max_batch`` and queue its requests
        again, first in line (streamed ones that already sent text cannot start over: they
        fail); False when the batch was one request, which cannot be made smaller."""
        import torch

        torch.cuda.empty_cache()
        if len(jobs) == 1:
            return False
        rows = sum(len(job.seqs) for job in jobs)
        self.max_batch, self._clean_batches = smaller_batch(self.max_batch, rows), 0
        self.log(f"out of GPU memory with {rows} sequences in one batch: batches of at most "
                 f"{self.max_batch} for a while")
        with self._cv:
            for job in reversed(jobs):
                if self._closed or job.request.stream and any(s.tokens for s in job.seqs):
                    _deliver(job, ("error", UserError(  # (it sent text, or nobody will run it)
                        "out of GPU memory while answering; ask again")))
                    _deliver(job, ("end",))
                else:
                    job.restart()
                    self._pending.insert(0, job)
            self._cv.notify_all()
        return True

    GROW_AFTER = 50  # clean batches before a halved max_batch doubles again

    def _grow_back(self) -> None:
        """A batch size halved for memory returns towards the configured one after
        ``GROW_AFTER`` batches without trouble (what ran out may have been one long prompt)."""
        if self.max_batch >= self._max_batch_limit:
            return
        self._clean_batches += 1
        if self._clean_batches >= self.GROW_AFTER:
            self.max_batch = min(self._max_batch_limit, self.max_batch * 2)
            self._clean_batches = 0

    def _adapter_kwargs(self, jobs: list[Job]) -> tuple[dict, object]:
        """(kwargs for generate, a context manager) selecting the batch's adapters."""
        import contextlib

        if not hasattr(self.model, "peft_config"):
            return {}, contextlib.nullcontext()
        names = [self.adapter_of[j.request.model] for j in jobs for _ in j.seqs]
        if self._mixed(jobs[0].request.decoding):
            return {"adapter_names": [n or "__base__" for n in names]}, contextlib.nullcontext()
        if names[0] is None:
            return {}, self.model.disable_adapter()
        self.model.set_adapter(names[0])
        return {}, contextlib.nullcontext()

    def _run(self, jobs: list[Job]) -> None:
        decoding = jobs[0].request.decoding
        kwargs, context = self._adapter_kwargs(jobs)
        with context:
            for job in jobs:
                if job.request.echo_logprobs:
                    one = {"adapter_names": [self.adapter_of[job.request.model] or "__base__"]} \
                        if self._mixed(decoding) else {}
                    job.prompt_logprobs = prompt_logprobs(
                        self.model, job.prompt_ids, job.request.top_logprobs or 0, **one)
            seqs = [s for j in jobs for s in j.seqs]
            decode(self.model, self.tokenizer, seqs, decoding, jobs[0].stop_ids,
                   self.static_cache, **kwargs)


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _deliver(job: Job, event: tuple) -> None:
    """Hand an event to a job's consumer; a consumer that is gone (its event loop closed)
    must not take the worker thread down with it."""
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 - the worker serves everyone else
        job.cancel()
