"""Template augmentation of instruction data: FLAN templates, zero/few-shot, CoT suffixes.

Owns the FLAN template file reader (``load_flan_templates``: ``{task: [[input, target], ...]}``
with ``{placeholder}`` fields), ``render_flan`` (one random template pair filled in),
``few_shot`` (k other examples prepended as ``Q: ...\\nA: ...`` blocks), ``add_cot_suffix``
("Let's think step by step." / "先思考，再决定。", idempotent) and ``iter_augment``, which applies
them to a sequence of records deterministically in a seed. Records are frozen; new ones are
built with ``dataclasses.replace`` and keep their ``source``, ``line`` and ``meta``.

A record is FLAN-rendered by ``iter_augment`` when a template file is given and its ``meta`` names
a task of that file (``meta["flan_task"]`` or ``meta["task"]``); the template fields come from
``meta["flan_fields"]`` (or the rest of ``meta``), with ``answer`` defaulting to the record's
answer.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from unitune.data.schema import Conversation, Turn
from unitune.errors import UserError, did_you_mean

COT_SUFFIXES = {"en": "Let's think step by step.", "zh": "先思考，再决定。"}


def load_flan_templates(path) -> dict[str, list[tuple[str, str]]]:
    """Read a FLAN template file: ``{task: [[input_template, target_template], ...]}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: template file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read template file: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a JSON object mapping task names to lists of "
                        "[input_template, target_template] pairs")
    out: dict[str, list[tuple[str, str]]] = {}
    for task, pairs in data.items():
        if not isinstance(pairs, list) or not pairs:
            raise UserError(f"{path}: task {task!r}: expected a non-empty list of "
                            "[input_template, target_template] pairs")
        checked = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(s, str) for s in pair)):
                raise UserError(f"{path}: task {task!r}: template {i}: expected a pair of "
                                f"strings [input_template, target_template], got {pair!r}")
            checked.append((pair[0], pair[1]))
        out[task] = checked
    return out


def _format(template: str, fields: dict) -> str:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as e:
        raise UserError(f"template {template!r}: malformed: {e}") from None
    for name in names:
        key = name.split(".")[0].split("[")[0]
        if key not in fields:
            raise UserError(f"template {template!r}: missing placeholder {{{key}}} (fields "
                            f"given: {', '.join(sorted(fields)) or 'none'})")
    try:
        return template.format(**fields)
    except (KeyError, IndexError, AttributeError, ValueError) as e:
        raise UserError(f"template {template!r}: cannot fill: {e}") from None


def render_flan(task_templates: list[tuple[str, str]], fields: dict, rng: random.Random
                ) -> tuple[str, str]:
    """Pick one (input, target) template pair with ``rng`` and fill it with ``fields``."""
    if not task_templates:
        raise UserError("render_flan: no templates for this task")
    input_template, target_template = rng.choice(list(task_templates))
    return _format(input_template, fields), _format(target_template, fields)


def _is_same(a: Conversation, b: Conversation) -> bool:
    return a is b or (a.system, a.turns) == (b.system, b.turns)


def few_shot(examples: list[Conversation], target: Conversation, k: int, rng: random.Random
             ) -> Conversation:
    """``target`` with ``k`` other single-turn ``examples`` prepended as Q/A blocks.

    k=0 returns ``target`` unchanged. Each example becomes ``"Q: <question>\\nA: <answer>\\n\\n"``
    (the example's input folded into its question); the blocks are put before the target's
    instruction and the target's ``input`` stays where it was. The result has the target's
    answer, system, source, line and meta.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UserError(f"few-shot: k must be an integer >= 0, got {k!r}")
    if k == 0:
        return target
    if not target.is_single_turn:
        raise UserError(f"{target.where}: few-shot: only single-turn examples can be rendered "
                        "few-shot")
    pool = [e for e in examples if e.is_single_turn and not _is_same(e, target)]
    if len(pool) < k:
        raise UserError(f"few-shot: {k} examples requested but only {len(pool)} other "
                        "single-turn examples are available")
    shots = rng.sample(pool, k)
    blocks = "".join(f"Q: {e.turns[0].user_text()}\nA: {e.answer}\n\n" for e in shots)
    user = target.turns[0]
    return replace(target, turns=(replace(user, content=blocks + user.content), target.turns[1]),
                   meta=dict(target.meta))


def add_cot_suffix(conv: Conversation, lang: str = "en") -> Conversation:
    """Append the chain-of-thought suffix for ``lang`` to the last user turn (once)."""
    if lang not in COT_SUFFIXES:
        raise UserError(f"CoT suffix: unknown language {lang!r}{did_you_mean(lang, COT_SUFFIXES)}"
                        f" (expected one of {', '.join(COT_SUFFIXES)})")
    suffix = COT_SUFFIXES[lang]
    for i in range(len(conv.turns) - 1, -1, -1):
        turn = conv.turns[i]
        if turn.role != "user":
            continue
        text = turn.content.rstrip()
        if text.endswith(suffix):
            return conv
        new = replace(turn, content=f"{text}\n{suffix}" if text else suffix)
        return replace(conv, turns=conv.turns[:i] + (new,) + conv.turns[i + 1:])
    return conv


def _flan_render_record(conv: Conversation, templates: dict[str, list[tuple[str, str]]],
                        rng: random.Random) -> Conversation:
    meta = conv.meta or {}
    task = meta.get("flan_task", meta.get("task"))
    if not isinstance(task, str) or task not in templates or not conv.is_single_turn:
        return conv
    fields = meta.get("flan_fields")
    if not isinstance(fields, dict):
        fields = {k: v for k, v in meta.items() if k not in ("flan_task", "task")}
    fields = {"answer": conv.answer, **fields}
    try:
        prompt, answer = render_flan(templates[task], fields, rng)
    except UserError as e:
        raise UserError(f"{conv.where}: FLAN task {task!r}: {e}") from None
    return replace(conv, turns=(Turn("user", prompt), Turn("assistant", answer)),
                   meta=dict(meta))


def iter_augment(records: Sequence[Conversation], templates: str | None,
                 zero_shot_ratio: float, k_shot: int, cot_suffix: str | None, seed: int
                 ) -> Iterator[Conversation]:
    """Augment ``records`` one by one (same order and number), deterministically in ``seed``.

    1. With ``templates`` (a FLAN template file), records whose meta names one of its tasks
       are rendered with a random template pair of that task.
    2. Each single-turn record is rendered few-shot, with ``k_shot`` other single-turn records
       of the sequence as examples, with probability ``1 - zero_shot_ratio`` (fewer examples
       when the sequence has fewer to offer).
    3. With ``cot_suffix`` (a language of ``COT_SUFFIXES``), the suffix is added.

    Multi-turn records pass through unchanged. Record i draws from its own RNG (seeded by
    ``seed`` and i), so records are augmented independently and ``records`` may be an
    Arrow-backed sequence of any size: only the positions of single-turn records are held.
    """
    if isinstance(zero_shot_ratio, bool) or not isinstance(zero_shot_ratio, (int, float)) \
            or not 0 <= zero_shot_ratio <= 1:
        raise UserError(f"augment: zero_shot_ratio must be in [0, 1], got {zero_shot_ratio!r}")
    if isinstance(k_shot, bool) or not isinstance(k_shot, int) or k_shot < 0:
        raise UserError(f"augment: k_shot must be an integer >= 0, got {k_shot!r}")
    if cot_suffix is not None and cot_suffix not in COT_SUFFIXES:
        raise UserError(f"augment: unknown CoT suffix language {cot_suffix!r}"
                        f"{did_you_mean(cot_suffix, COT_SUFFIXES)} (expected one of "
                        f"{', '.join(COT_SUFFIXES)})")
    flan = load_flan_templates(templates) if templates is not None else None

    def base(i: int, conv: Conversation) -> Conversation:
        if not flan:
            return conv
        return _flan_render_record(conv, flan, random.Random(f"{seed}:flan:{i}"))

    singles = np.fromiter((i for i, c in enumerate(records) if c.is_single_turn),
                          dtype=np.int64) if k_shot else np.zeros(0, np.int64)
    for i, conv in enumerate(records):
        conv = base(i, conv)
        if not conv.is_single_turn:
            yield conv
            continue
        rng = random.Random(f"{seed}:augment:{i}")
        if k_shot and rng.random() >= zero_shot_ratio:
            picked = [int(singles[j]) for j in
                      rng.sample(range(len(singles)), min(k_shot + 1, len(singles)))]
            others = [base(j, records[j]) for j in picked if j != i]
            others = [o for o in others if not _is_same(o, conv)][:k_shot]
            if others:
                conv = few_shot(others, conv, len(others), rng)
        if cot_suffix is not None:
            conv = add_cot_suffix(conv, cot_suffix)
        yield conv
