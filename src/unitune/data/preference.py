"""Preference data as the preference stages train on it: pairs, unpaired feedback and prompts,
encoded by the same template, special tokens and truncation policy as instruction tuning.

Owns
- ``encode_preferences``: each record's prompt + answer conversations encoded by
  ``encode.encode_rows`` (the template renders them, the loss mask marks the reply and its
  end-of-turn marker, an over-long prompt is cut from the left keeping BOS, a reply is never
  cut: a pair whose chosen or rejected reply cannot fit is dropped and counted), in one of
  three forms:

  - ``sequences`` (reward modelling): ``chosen_ids`` and ``rejected_ids``, each whole text up
    to the end of its reply: what a reward model scores at its last token;
  - ``pairs`` (DPO and its variants): ``prompt_ids`` (what the two texts share up to either
    reply), ``chosen_ids`` and ``rejected_ids`` (the rest up to the end of each reply);
  - ``unpaired`` (KTO): ``prompt_ids``, ``completion_ids`` and ``label`` (desirable or not),
    from a pair (its chosen answer desirable, its rejected one not) or from a conversation
    whose record carries a boolean ``label`` (or ``kto_tag``) for its last reply.

  The rows are written by ``datasets.map`` into an Arrow file (of any size, in flat memory).
- ``prompt_rows`` (GRPO, RLOO): the prompt rendered for generation exactly as the inference
  engine renders it, the prompt conversation as OpenAI messages (JSON, for reward models that
  render it with their own template) and the reference answer (a prompt record's reference,
  a conversation's last reply or a pair's chosen answer; empty if there is none) for reward
  functions that check answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from unitune.data.encode import (
    IGNORE,
    STATUS,
    EncodeReport,
    common_prefix,
    encode_rows,
    encode_table,
)
from unitune.data.schema import Conversation, PreferencePair, Prompt
from unitune.data.store import Records, from_row, rows_of
from unitune.data.templates import Template
from unitune.errors import UserError

FORMS = ("sequences", "pairs", "unpaired")
_IDS = datasets.Sequence(datasets.Value("int32"))
_FEATURES = {
    "sequences": {"chosen_ids": _IDS, "rejected_ids": _IDS},
    "pairs": {"prompt_ids": _IDS, "chosen_ids": _IDS, "rejected_ids": _IDS},
    "unpaired": {"prompt_ids": _IDS, "completion_ids": _IDS, "label": datasets.Value("bool")},
}


def feedback_label(conv: Conversation) -> bool:
    """A conversation's unpaired feedback on its last reply: its ``label`` or ``kto_tag``."""
    for key in ("label", "kto_tag"):
        value = conv.meta.get(key)
        if isinstance(value, bool):
            return value
        if key in conv.meta:
            raise UserError(f"{conv.where}: {key}: expected true or false, got {value!r}")
    raise UserError(f"{conv.where}: label: missing; unpaired feedback (stage=kto) needs a "
                    "boolean 'label' (or 'kto_tag') on each conversation, or preference pairs")


def _replies(record) -> list[tuple[Conversation, str, bool]]:
    """(prompt, answer, desirable) for each answer of a record."""
    if isinstance(record, PreferencePair):
        return [(record.prompt, record.chosen, True), (record.prompt, record.rejected, False)]
    return [(record.prompt(), record.answer, feedback_label(record))]  # (ends with a reply)


def reply_span(labels: list[int]) -> tuple[int, int]:
    """(the first trained position, one past the last) of an encoded reply."""
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    return trained[0], trained[-1] + 1


def _encode_batch(batch: dict, tokenizer, template: Template, max_length: int,
                  form: str) -> dict:
    records = [from_row(r) for r in rows_of(batch)]
    replies = [reply for rec in records for reply in _replies(rec)]
    if form == "unpaired":  # the desirable answers, then the undesirable ones: KTO's KL term
        # takes each answer with the next row's prompt, so never with its own pair's prompt
        replies = [r for r in replies if r[2]] + [r for r in replies if not r[2]]
    rows = encode_rows([p.with_reply(a) for p, a, _ in replies], tokenizer, template,
                       max_length, "last")
    out: dict[str, list] = {key: [] for key in (*_FEATURES[form], *STATUS)}

    def emit(status: dict, **ids) -> None:
        for key, value in {**ids, **status}.items():
            out[key].append(value)

    def status(parts: list[dict]) -> dict:
        return {"dropped": next((p["dropped"] for p in parts if p["dropped"]), ""),
                "prompt_truncated": any(p["prompt_truncated"] for p in parts),
                "turns_dropped": any(p["turns_dropped"] for p in parts),
                "tokens": max(p["tokens"] for p in parts)}

    empty: dict = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "completion_ids": [],
                   "label": False}
    if form == "unpaired":
        for (_, _, desirable), row in zip(replies, rows, strict=True):
            if row["dropped"]:
                emit(status([row]), **{k: empty[k] for k in _FEATURES[form]})
                continue
            start, end = reply_span(row["labels"])
            emit(status([row]), prompt_ids=row["input_ids"][:start],
                 completion_ids=row["input_ids"][start:end], label=desirable)
        return out
    for chosen, rejected in zip(rows[::2], rows[1::2], strict=True):
        state = status([chosen, rejected])
        if state["dropped"]:
            emit(state, **{k: empty[k] for k in _FEATURES[form]})
            continue
        (c_start, c_end), (r_start, r_end) = reply_span(chosen["labels"]), \
            reply_span(rejected["labels"])
        c_ids, r_ids = chosen["input_ids"], rejected["input_ids"]
        if form == "sequences":
            emit(state, chosen_ids=c_ids[:c_end], rejected_ids=r_ids[:r_end])
            continue
        c_prompt, r_prompt = c_ids[:c_start], r_ids[:r_start]
        if c_prompt != r_prompt and (state["prompt_truncated"] or state["turns_dropped"]):
            # fitted differently (each around its own reply): both take the shorter window,
            # which fits beside either reply
            prompt = min(c_prompt, r_prompt, key=len)
            emit(state, prompt_ids=prompt, chosen_ids=c_ids[c_start:c_end],
                 rejected_ids=r_ids[r_start:r_end])
            continue
        # what both texts share before either reply (tokens that merge across the reply's
        # first character leave the rest to each side)
        shared = min(common_prefix(c_ids, r_ids), c_start, r_start)
        emit(state, prompt_ids=c_ids[:shared], chosen_ids=c_ids[shared:c_end],
             rejected_ids=r_ids[shared:r_end])
    return out


def encode_preferences(records: Records, tokenizer, template: Template, max_length: int,
                       form: str, out: Path, workers: int | None = None,
                       progress: bool = False) -> tuple[datasets.Dataset, EncodeReport]:
    """The rows of ``form`` (``FORMS``) that fit ``max_length``, written to the Arrow file
    ``out`` and read back memory-mapped, and the report (examples kept, prompts truncated,
    dropped and why)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    return encode_table(records, _encode_batch, _FEATURES[form],
                        {"tokenizer": tokenizer, "template": template,
                         "max_length": max_length, "form": form}, out, workers, progress,
                        rows_are_records=form != "unpaired")  # (unpaired rows are answers)


def _prompt_of(record) -> tuple[Conversation, str]:
    """(the prompt, the reference answer) of a prompt, a pair or a (training) conversation."""
    if isinstance(record, Prompt):
        return record.prompt, record.reference
    if isinstance(record, PreferencePair):
        return record.prompt, record.chosen
    return record.prompt(), record.answer


def _prompt_batch(batch: dict, tokenizer, template: Template, max_length: int) -> dict:
    from unitune.data.encode import tokenize_ids

    prompts = [_prompt_of(from_row(r)) for r in rows_of(batch)]
    texts = [template.render_prompt(conv, tokenizer) for conv, _ in prompts]
    lengths = [len(ids) for ids in tokenize_ids(texts, tokenizer, template.add_special_tokens)]
    return {"prompt": texts,
            "messages": [json.dumps(conv.messages(), ensure_ascii=False) for conv, _ in prompts],
            "answer": [answer for _, answer in prompts],
            "tokens": lengths, "prompt_truncated": [False] * len(texts),
            "turns_dropped": [False] * len(texts),
            "dropped": ["prompt fills max_length: no room for an answer" if n >= max_length
                        else "" for n in lengths]}


def encoded_rows(records: list, tokenizer, template: Template, max_length: int,
                 form: str) -> list[dict]:
    """Each record's row of ``form`` (``pairs`` or ``prompts``), a dropped one's too (its
    ``dropped`` says why), in memory: for a few records to look at (``data preview``)."""
    batch = Records.from_list(records).table[:]
    out = _prompt_batch(batch, tokenizer, template, max_length) if form == "prompts" else \
        _encode_batch(batch, tokenizer, template, max_length, form)
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def prompt_rows(records: Records, tokenizer, template: Template, max_length: int,
                out: Path, progress: bool = False) -> tuple[datasets.Dataset, EncodeReport]:
    """GRPO / RLOO prompts (``prompt``, ``messages``, ``answer``); a prompt of ``max_length``
    tokens or more leaves no room to answer and is dropped (counted)."""
    text = datasets.Value("string")
    return encode_table(records, _prompt_batch, {"prompt": text, "messages": text,
                                                 "answer": text},
                        {"tokenizer": tokenizer, "template": template,
                         "max_length": max_length}, out, progress=progress)
