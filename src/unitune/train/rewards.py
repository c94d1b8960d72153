"""Rewards: what the RL stages (``grpo``, ``rloo``) optimise and ``unitune eval`` can score.

Owns the three kinds of reward ``rl.reward`` names, each a callable with TRL's reward
signature (``prompts``, ``completions`` and the data's columns, ``messages`` and ``answer``,
as keywords; one float per completion, or None where it does not apply):

- a reward-model run (``stage=rm``): each answer is appended to its prompt's messages as an
  assistant turn and encoded by the reward model's own template and truncation policy (the
  encoding it was trained on), then scored at its last token; its tokenizer must be the
  policy's;
- the built-ins: ``exact_match`` (1 when the answer is the reference answer, else 0),
  ``number_match`` (1 when the answer's final number is the reference's, after GSM8K's
  ``####`` if it has one) and ``brevity`` (``1 / (1 + len(answer) / len(reference))``:
  higher for shorter answers);
- the user's own Python function, ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``.

Answers are cut at the template's end-of-turn markers before any reward sees them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch

from unitune.errors import UserError, did_you_mean


def exact_match(completions: list[str], answer: list[str], **_) -> list[float]:
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def brevity(completions: list[str], answer: list[str], **_) -> list[float]:
    return [1.0 / (1.0 + len(c.strip()) / max(len(a.strip()), 1))
            for c, a in zip(completions, answer, strict=True)]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The number a text ends on: the one after GSM8K's ``####`` when there is one, else the
    last in the text (``1,000`` is 1000); None when it has none."""
    found = _NUMBER.findall(text.rsplit("####", 1)[-1])
    return float(found[-1].replace(",", "")) if found else None


def number_match(completions: list[str], answer: list[str], **_) -> list[float | None]:
    """1 when the answer's final number is the reference's (GSM8K-style math), else 0; None
    where the reference has no number."""
    out: list[float | None] = []
    for completion, reference in zip(completions, answer, strict=True):
        want = final_number(reference)
        out.append(None if want is None else float(final_number(completion) == want))
    return out


BUILTIN: dict[str, Callable] = {"exact_match": exact_match, "number_match": number_match,
                                "brevity": brevity}


class RewardModel:
    """A reward-model run as a reward function (and for evaluation: ``score``)."""

    def __init__(self, folder: str, device: str = "auto", trust_remote_code: bool = False,
                 log=print, batch_size: int = 8):
        from unitune.run import open_model, stored_config

        self.folder = folder
        self.__name__ = Path(folder).name
        self.model, self.tokenizer, self.template = open_model(
            folder, device=device, trust_remote_code=trust_remote_code, log=log,
            progress=False, reward_model=True)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = stored_config(Path(folder))["max_length"]
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, conversations) -> list[float | None]:
        """The reward of each conversation's last reply (None: it cannot fit max_length)."""
        from unitune.data.encode import Collator, encode_rows
        from unitune.data.preference import reply_span

        rows = encode_rows(list(conversations), self.tokenizer, self.template,
                           self.max_length, "last")
        scores: list[float | None] = [None] * len(rows)
        todo = [(i, r["input_ids"][:reply_span(r["labels"])[1]])  # (scored at the reply's end)
                for i, r in enumerate(rows) if not r["dropped"]]
        device = next(self.model.parameters()).device
        collate = Collator(self.tokenizer.pad_token_id)
        for start in range(0, len(todo), self.batch_size):
            part = todo[start:start + self.batch_size]
            batch = collate([{"input_ids": ids, "labels": []} for _, ids in part])
            logits = self.model(input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device)).logits[:, 0]
            for (i, _), value in zip(part, logits.float().tolist(), strict=True):
                scores[i] = value
        return scores

    def __call__(self, prompts, completions, messages, **_) -> list[float | None]:
        from unitune.data.readers import conversation_from_messages

        return self.score(conversation_from_messages(json.loads(m)).with_reply(c)
                          for m, c in zip(messages, completions, strict=True))


@functools.cache
def _user_function(spec: str) -> Callable:
    """The function ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION`` names (imported once)."""
    where, _, name = spec.rpartition(":")
    path = Path(where)
    if where.endswith(".py") and not path.is_file():
        raise UserError(f"rl.reward={spec}: no such file {where}")
    try:
        if where.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(f"_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as exc:  # (the user's code: any error it raises while importing)
        raise UserError(f"rl.reward={spec}: importing {where} failed: "
                        f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"rl.reward={spec}: {where} has no function '{name}'")
    return fn


def _kind(spec: str) -> str:
    if Path(spec).is_dir():
        return "run"
    if spec in BUILTIN:
        return "builtin"
    if ":" in spec:
        return "function"
    raise UserError(f"rl.reward={spec}: not a reward-model run folder, a built-in"
                    f"{did_you_mean(spec, BUILTIN)} ({', '.join(BUILTIN)}) or "
                    "FILE.py:FUNCTION / MODULE:FUNCTION")


def check_rewards(specs: list[str], tokenizer=None) -> None:
    """Refuse a reward that cannot work, before any weights load: a run that is not a
    reward model, a reward model with another tokenizer than ``tokenizer``, a missing file
    or function."""
    from unitune.run import open_tokenizer, read_finished

    for spec in specs:
        kind = _kind(spec)
        if kind == "function":
            _user_function(spec)
        elif kind == "run":
            record = read_finished(spec)
            if record.kind != "rm":
                raise UserError(f"rl.reward={spec}: a run of kind '{record.kind}', not a "
                                "reward model (train one with stage=rm)")
            if tokenizer is not None:
                theirs, _ = open_tokenizer(spec, log=lambda *a: None)
                if theirs.get_vocab() != tokenizer.get_vocab():
                    raise UserError(f"rl.reward={spec}: the reward model's tokenizer differs "
                                    "from the policy's; train the reward model from the same "
                                    "base (or tokenizer)")


class _CutAtStops:
    """A reward that sees each answer up to the template's first end-of-turn marker."""

    def __init__(self, fn: Callable, stops: list[str]):
        self.fn, self.stops = fn, [s for s in stops if s]
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def cut(self, text: str) -> str:
        ends = [text.find(s) for s in self.stops if s in text]
        return text[:min(ends)] if ends else text

    def __call__(self, prompts, completions, **kwargs):
        return self.fn(prompts=prompts, completions=[self.cut(c) for c in completions],
                       **kwargs)


def load_rewards(specs: list[str], tokenizer, template, log=print,
                 trust_remote_code: bool = False, device: str = "auto") -> list[Callable]:
    """The reward callables ``specs`` name, answers cut at ``template``'s markers."""
    stops = template.stop_strings(tokenizer)
    out = []
    for spec in specs:
        kind = _kind(spec)
        fn = BUILTIN[spec] if kind == "builtin" else _user_function(spec) \
            if kind == "function" else RewardModel(spec, device, trust_remote_code, log)
        out.append(_CutAtStops(fn, stops))
    return out
