"""Generation: the one decoding path every command goes through (eval, generate, chat,
predict, the HTTP API), on transformers' ``generate``.

``decode`` runs one batch of ``Sequence``s that share the sampling controls (``Decoding``):
left-padded prompts, each sequence with its own token budget, stop strings, cancellation and
token callback (streaming), log-probabilities of the chosen tokens and the top alternatives.
Prompts are tokenised exactly as in training (special tokens added only where the template
leaves them to the tokenizer). Generation stops, through transformers' own stopping, at the
union of the model's ``generation_config`` EOS ids, the tokenizer's EOS and the template's
end-of-turn markers (a marker that is one token joins the EOS ids, a longer one is a stop
string); a stop string that ends an answer is not part of it.

Log-probabilities are of the model's next-token distribution after repetition penalties and
before temperature and top-k/top-p/min-p truncation (for greedy decoding: the model's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from unitune.data.encode import encoder_ids, tokenize_ids
from unitune.data.schema import Conversation
from unitune.data.templates import Template
from unitune.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Decoding:
    """Decoding controls. Greedy by default; ``do_sample`` enables temperature, top-p, top-k
    and min-p; ``seed`` makes sampling reproducible (None: not reseeded)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    seed: int | None = 0
    json_object: bool = False  # JSON mode: the reply is a JSON object (infer/json_mode.py)

    def __post_init__(self):
        checks = [("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
                  ("temperature", self.temperature > 0, "> 0"),
                  ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("top_k", self.top_k >= 0, ">= 0"),
                  ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
                  ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
                  ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0"),
                  ("num_beams", self.num_beams >= 1, ">= 1"),
                  ("seed", self.seed is None or 0 <= self.seed < 2**63, "in [0, 2**63)")]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"{name} must be {rule}, got {getattr(self, name)!r}")
        if self.json_object and self.num_beams > 1:
            raise UserError("JSON mode works with greedy decoding or sampling, not beam "
                            f"search (num_beams {self.num_beams})")

    @property
    def batch_key(self) -> tuple:
        """What sequences decoded in one batch must share (all but the token budget)."""
        return replace(self, max_new_tokens=0)

    def generation_config(self, eos_token_id: list[int], pad_token_id: int):
        """These controls as transformers' ``GenerationConfig``."""
        from transformers import GenerationConfig

        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                    "min_p": self.min_p or None} if self.do_sample else \
            {"temperature": None, "top_p": None, "top_k": None}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                repetition_penalty=self.repetition_penalty,
                                no_repeat_ngram_size=self.no_repeat_ngram_size,
                                num_beams=self.num_beams, eos_token_id=eos_token_id,
                                pad_token_id=pad_token_id, **sampling)


PRESETS = {
    "greedy": Decoding(),
    # Alpaca-CoT's generate.py defaults
    "alpaca_cot": Decoding(do_sample=True, top_p=0.9, temperature=1.0, no_repeat_ngram_size=6,
                           repetition_penalty=1.8),
}


def preset(name: str) -> Decoding:
    if name not in PRESETS:
        raise UserError(f"unknown decoding preset '{name}'{did_you_mean(name, PRESETS)}; "
                        f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def split_stops(tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(the ids of the stops that are one token, the stop strings longer than one token)."""
    ids, strings = [], []
    for stop in stops:
        pieces = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.append(pieces[0])
        else:
            strings.append(stop)
    return ids, strings


def tokens_through_stop(tokenizer, ids: list[int], stops: list[str]) -> int:
    """How many of ``ids`` (a sampled answer) to keep so that it ends with its first stop
    string, marker included: the fewest tokens whose text holds one (all of them when none
    does). Cuts at a token boundary, so what is kept is exactly what was sampled."""
    def holds(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=False)
        return any(stop in text for stop in stops)

    if not stops or not holds(len(ids)):
        return len(ids)
    low, high = 1, len(ids)  # holds(high); find the smallest such n
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle + 1, high)
    return high


def model_eos_ids(model, tokenizer) -> list[int]:
    """The model's ``generation_config`` EOS ids and the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def eos_ids(model, tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(the token ids that end generation, the stop strings longer than one token)."""
    ids, strings = split_stops(tokenizer, stops)
    return list(dict.fromkeys(model_eos_ids(model, tokenizer) + ids)), strings


@dataclass
class Sequence:
    """One sequence to generate and, once ``decode`` returns, its result.

    ``on_text(delta, token_logprobs)`` is called as text becomes final (a suffix that could
    begin a stop string is held back until it cannot); ``cancelled()`` ends it early."""

    prompt_ids: list[int]
    max_new_tokens: int
    stops: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no log-probabilities; 0: the chosen token's only
    on_text: Callable[[str, list[dict]], None] | None = None
    cancelled: Callable[[], bool] = lambda: False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict] = field(default_factory=list)  # {"token", "logprob", "top": {...}}
    finish_reason: str | None = None
    _sent: int = 0  # characters of ``text`` handed to on_text
    _sent_logprobs: int = 0
    _prefix: int = 0  # token offsets of incremental detokenisation
    _read: int = 0
    _cut: bool = False  # the text ends at a stop string

    def _advance(self, tokenizer) -> None:
        """Bring ``text`` up to date with ``tokens``, decoding only the tail (a piece that
        ends in a partial character waits for the next token); then look for stop strings."""
        if self.on_text is None and not self.stops:
            return  # nobody reads the text before the end: decode it once then
        done = tokenizer.decode(self.tokens[self._prefix:self._read], skip_special_tokens=True)
        new = tokenizer.decode(self.tokens[self._prefix:], skip_special_tokens=True)
        if len(new) > len(done) and not new.endswith("\ufffd"):
            self.text += new[len(done):]
            self._prefix, self._read = self._read, len(self.tokens)
        self._stop_at_strings()

    def _stop_at_strings(self) -> None:
        cut = min((self.text.find(s) for s in self.stops if s in self.text), default=-1)
        if cut >= 0:
            self.text, self._cut = self.text[:cut], True
            self._finish("stop")

    def _complete(self, tokenizer) -> None:
        """The final text (the whole reply decoded at once, unless a stop string cut it)."""
        self._finish("length")
        if not self._cut:
            self.text = tokenizer.decode(self.tokens, skip_special_tokens=True)
            self._stop_at_strings()
        self._emit(final=True)

    def _finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason

    def _emit(self, final: bool) -> None:
        if self.on_text is None:
            return
        end = len(self.text)
        if not final:  # hold back a partial character and what may still become a stop
            while end > self._sent and self.text[end - 1] == "\ufffd":
                end -= 1
            for stop in self.stops:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if self.text.endswith(stop[:k]):
                        end = min(end, len(self.text) - k)
                        break
        if end > self._sent or (final and self._sent_logprobs < len(self.logprobs)):
            delta, self._sent = self.text[self._sent:end], end
            done = len(self.logprobs) if final else len(self.logprobs) - (len(self.text) > end)
            lps, self._sent_logprobs = self.logprobs[self._sent_logprobs:done], max(
                self._sent_logprobs, done)
            self.on_text(delta, lps)


class _Recorder:
    """A logits processor that keeps each step's log-probabilities (after penalties, before
    temperature and truncation) for the streamer to read the chosen token's."""

    def __init__(self):
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids, scores):
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _Tracker:
    """transformers streamer + stopping criterion over a batch of ``Sequence``s."""

    def __init__(self, tokenizer, seqs: list[Sequence], stop_ids: list[int], recorder):
        self.tokenizer, self.seqs, self.stop_ids = tokenizer, seqs, set(stop_ids)
        self.recorder, self.started = recorder, False

    # streamer -------------------------------------------------------------------------
    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the first call carries the prompt (or the decoder start)
            self.started = True
            return
        for row, token in enumerate(value.view(-1).tolist()):
            seq = self.seqs[row]
            if seq.finish_reason is not None:
                continue
            if token in self.stop_ids:
                seq._finish("stop")
                continue
            seq.tokens.append(token)
            if seq.top_logprobs is not None and self.recorder.last is not None:
                seq.logprobs.append(self._logprob(row, token, seq.top_logprobs))
            seq._advance(self.tokenizer)
            if len(seq.tokens) >= seq.max_new_tokens:
                seq._finish("length")
            seq._emit(final=False)

    def _logprob(self, row: int, token: int, top: int) -> dict:
        lp = self.recorder.last[row]
        entry = {"token": token, "logprob": lp[token].item()}
        if top:
            values, ids = lp.topk(top)
            entry["top"] = dict(zip(ids.tolist(), values.tolist(), strict=True))
        return entry

    def end(self) -> None:
        pass

    # stopping criterion ---------------------------------------------------------------
    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        for seq in self.seqs:
            if seq.finish_reason is None and seq.cancelled():
                seq._finish("cancelled")
        return torch.tensor([s.finish_reason is not None for s in self.seqs],
                            device=input_ids.device)


def _tokenize(model, tokenizer, prompts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Prompt ids exactly as in training (an encoder-decoder's encoder side)."""
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    return (encoder_ids if seq2seq else tokenize_ids)(prompts, tokenizer, add_special_tokens)


@torch.inference_mode()
def decode(model, tokenizer, seqs: list[Sequence], decoding: Decoding, stop_ids: list[int],
           static_cache: bool = False, **model_kwargs) -> list[Sequence]:
    """Generate every sequence of one batch (left-padded); ``model_kwargs`` go to
    ``generate`` (PEFT's ``adapter_names`` for a mixed-adapter batch). ``static_cache``:
    transformers' static KV cache, with which it compiles the decoding step on a GPU (each
    new batch size or length compiles again: for steady shapes such as one chat)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    for s in seqs:  # a zero budget (scoring a prompt) takes no token, even beside others
        if s.max_new_tokens == 0:
            s._finish("length")
    budget = max(s.max_new_tokens for s in seqs)
    if budget == 0:
        return seqs
    # no end ids at all (ignore_eos) is an impossible id, not None: None would let the
    # model's own generation_config fill it in
    config = decoding.generation_config(stop_ids or [-1], tokenizer.pad_token_id)
    config.max_new_tokens = budget
    if static_cache:
        config.cache_implementation = "static"
    device = next(model.parameters()).device
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer.pad({"input_ids": [s.prompt_ids for s in seqs]}, padding=True,
                            return_tensors="pt").to(device)
    finally:
        tokenizer.padding_side = saved_side
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    if decoding.num_beams > 1:  # beam search: no streaming or per-sequence stopping
        out = model.generate(**enc, generation_config=config, **model_kwargs)
        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        new = out if seq2seq else out[:, enc["input_ids"].shape[1]:]
        for seq, ids in zip(seqs, new.tolist(), strict=True):
            if seq.finish_reason is not None:
                continue
            stop_at = next((i for i, t in enumerate(ids) if t in stop_ids), None)
            ids = ids[:stop_at]
            while ids and ids[-1] == tokenizer.pad_token_id:  # (padding after an early end)
                ids.pop()
            seq.tokens = ids[:seq.max_new_tokens]
            if stop_at is not None and stop_at <= seq.max_new_tokens:
                seq._finish("stop")
            seq._complete(tokenizer)
        return seqs
    recorder = _Recorder()
    tracker = _Tracker(tokenizer, seqs, stop_ids, recorder)
    # (first: the model's own log-probabilities, not the masked ones of JSON mode)
    processors = [recorder] if any(s.top_logprobs is not None for s in seqs) else []
    if decoding.json_object:
        from unitune.infer.json_mode import JsonObjectProcessor

        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        # (an encoder-decoder's decoder ids begin with its start token alone)
        processors.append(JsonObjectProcessor(tokenizer, 1 if seq2seq else
                                              enc["input_ids"].shape[1], stop_ids))
    model.generate(**enc, generation_config=config, streamer=tracker,
                   stopping_criteria=StoppingCriteriaList([tracker]),
                   logits_processor=LogitsProcessorList(processors), **model_kwargs)
    for seq in seqs:
        seq._complete(tokenizer)
    return seqs


@torch.inference_mode()
def prompt_logprobs(model, ids: list[int], top: int = 0, **model_kwargs) -> list[dict | None]:
    """Each prompt token's log-probability given the tokens before it (the first has none)."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device), **model_kwargs).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    out: list[dict | None] = [None]
    for pos in range(1, len(ids)):
        entry = {"token": ids[pos], "logprob": lp[pos - 1, ids[pos]].item()}
        if top:
            values, top_ids = lp[pos - 1].topk(top)
            entry["top"] = dict(zip(top_ids.tolist(), values.tolist(), strict=True))
        out.append(entry)
    return out


def smaller_batch(batch_size: int, rows: int) -> int:
    """The batch size after a batch of ``rows`` sequences ran out of GPU memory: half of
    what was tried."""
    return max(1, min(batch_size, rows) // 2)


def generate_texts(model, tokenizer, prompts: list[str], decoding: Decoding,
                   batch_size: int = 32, stops: list[str] | None = None,
                   add_special_tokens: bool = True, log=None) -> list[str]:
    """Answers to already-rendered prompts, in input order, without surrounding whitespace.
    A batch that runs out of GPU memory is answered again in halves (and later batches are
    as small), down to one prompt; ``log`` (default: standard error) says so."""
    import sys

    log = log or (lambda message: print(message, file=sys.stderr))
    stops = stops or []
    stop_ids, strings = eos_ids(model, tokenizer, stops)
    ids = _tokenize(model, tokenizer, prompts, add_special_tokens)
    answers: list[str] = []
    while len(answers) < len(prompts):
        seqs = [Sequence(p, decoding.max_new_tokens, strings)
                for p in ids[len(answers):len(answers) + batch_size]]
        try:
            decode(model, tokenizer, seqs, decoding, stop_ids)
        except torch.cuda.OutOfMemoryError:
            if len(seqs) == 1:
                raise UserError(f"prompt {len(answers) + 1} ({len(seqs[0].prompt_ids)} tokens "
                                f"+ {decoding.max_new_tokens} new) does not fit in GPU memory "
                                "on its own; shorten it or lower max_new_tokens") from None
            torch.cuda.empty_cache()
            batch_size = smaller_batch(batch_size, len(seqs))
            log(f"out of GPU memory: answering in batches of {batch_size}")
            continue
        answers.extend(s.text.strip() for s in seqs)
    return answers


def answer(model, tokenizer, template: Template, conversations: list[Conversation],
           decoding: Decoding, batch_size: int = 32) -> list[str]:
    """The next assistant reply to each conversation (a final assistant turn, if present, is
    the reference and is left out), rendered through ``template``."""
    prompts = [template.render_prompt(c, tokenizer) for c in conversations]
    return generate_texts(model, tokenizer, prompts, decoding, batch_size,
                          template.stop_strings(tokenizer), template.add_special_tokens)
