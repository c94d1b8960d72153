"""What the command groups share: the one-line-error parser, the engine and decoding flags,
the training config from items and flags."""

from __future__ import annotations

import argparse
import math
import sys

from unitune.errors import UserError, did_you_mean


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line with a 'did you mean' hint for misspelled flags."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            message = unknown_flags_message(self, message.split(":", 1)[1].split())
        elif message.startswith("argument command: invalid choice"):
            bad = message.split("'")[1] if "'" in message else ""
            choices = [a for a in self._subparsers._group_actions[0].choices] \
                if self._subparsers else []
            message = f"unknown command '{bad}'{did_you_mean(bad, choices)}"
        raise UserError(f"{self.prog}: {message}")


def unknown_flags_message(parser: argparse.ArgumentParser, args: list[str]) -> str:
    options = [s for a in parser._actions for s in a.option_strings]
    parts = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        parts.append(f"unknown option '{flag}'{did_you_mean(flag, options)}"
                     if flag.startswith("-") else f"unexpected argument '{arg}'")
    return "; ".join(parts)


def _checked(parse, ok, expected: str):
    """An argparse type: ``parse(text)`` when ``ok`` of it, else the flag's one-line error
    (``argument --limit: expected a whole number >= 1, got '-1'``)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


def whole(least: int, most: int | None = None):
    """An argparse type: a whole number in ``least..most``."""
    return _checked(int, lambda v: least <= v and (most is None or v <= most),
                    f"a whole number >= {least}" if most is None else
                    f"a whole number in {least}..{most}")


def number(low: float, strict: bool = True):
    """An argparse type: a finite number greater than ``low`` (``strict``) or at least it."""
    return _checked(float, lambda v: math.isfinite(v) and (v > low if strict else v >= low),
                    f"a number {'>' if strict else '>='} {low:g}")


PORT = whole(1, 65535)


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def add_decoding(p, max_new_tokens: int = 128) -> None:
    """The decoding controls, over a named preset (only the flags given change it)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--preset", default="greedy", help="greedy (default) or alpaca_cot "
                   "(Alpaca-CoT's defaults: sampling, top_p 0.9, no_repeat_ngram_size 6, "
                   "repetition_penalty 1.8)")
    g.add_argument("--max-new-tokens", type=whole(1), default=max_new_tokens)
    g.add_argument("--do-sample", action="store_true", default=None,
                   help="sample instead of greedy decoding")
    for flag, kind in (("--temperature", float), ("--top-p", float), ("--top-k", whole(0)),
                       ("--min-p", float), ("--repetition-penalty", float),
                       ("--no-repeat-ngram-size", whole(0)), ("--num-beams", whole(1)),
                       ("--seed", whole(0, 2**63 - 1))):
        g.add_argument(flag, type=kind, default=None)


def decoding_of(args):
    from dataclasses import replace

    from unitune.infer.generate import preset

    given = {k: getattr(args, k) for k in ("max_new_tokens", "do_sample", "temperature",
                                           "top_p", "top_k", "min_p", "repetition_penalty",
                                           "no_repeat_ngram_size", "num_beams", "seed")
             if getattr(args, k) is not None}
    return replace(preset(args.preset), **given)


def add_engine(p, several: bool = True) -> None:
    p.add_argument("target", help="a finished run folder, or a base model (preset, folder or "
                   "hub id)")
    if several:
        p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN",
                       help="serve another adapter of the same base under NAME; RUN may be a "
                       "module-arithmetic expression (repeatable)")
    p.add_argument("--template", default=None,
                   help="a base model's template (default: its own); overriding a run's is "
                   "warned about (it was trained with its own)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--static-cache", action="store_true",
                   help="a static KV cache, with which transformers compiles decoding on a GPU "
                   "(fastest at one steady batch size, e.g. a chat; each new shape compiles)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model run its own code (a base model's, or a run's trained with "
                   "trust_remote_code)")
    p.add_argument("--rope", metavar="TYPE:FACTOR", help="RoPE scaling (linear, dynamic or "
                   "yarn), e.g. dynamic:4: a base model's longer context, or instead of a "
                   "run's own (warned about)")


def rope_of(args) -> dict | None:
    from unitune.models.rope import parse  # (imported on use: the CLI starts light)

    return parse(args.rope)


def named_targets(flag: str, items: list[str]) -> dict[str, str]:
    """Repeated ``FLAG NAME=RUN`` items as {name: run}; a name given twice is refused."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not name or not target:
            raise UserError(f"{flag} {item!r}: expected NAME=RUN (a run folder, a base model "
                            "or, for adapters, an expression over runs)")
        if name in named:
            raise UserError(f"{flag} {item!r}: the name {name!r} is taken by {named[name]}; "
                            "give each its own name")
        named[name] = target
    return named


def open_engine(args, **kw):
    from unitune.infer.engine import Engine

    adapters = named_targets("--adapter", getattr(args, "adapter", []))
    return Engine(args.target, adapters, device=args.device, template=args.template,
                  trust_remote_code=args.trust_remote_code, static_cache=args.static_cache,
                  rope_scaling=rope_of(args), log=stderr, **kw)


def first_model(engine, args) -> str:
    """``--model`` (checked), else the run (the first adapter), else the base."""
    model = getattr(args, "model", None) or (engine.adapters[0] if engine.adapters else
                                             engine.base_id)
    engine.template(model)  # an unknown name fails here
    return model


def check_address(args) -> None:
    """``--host``/``--port`` to listen on: an API key beyond this machine, a port that is free
    (checked before any model loads)."""
    import errno
    import socket

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        raise UserError(f"--host {args.host} listens beyond this machine: give --api-key (or "
                        "set UNITUNE_API_KEY)")
    if getattr(args, "share", False) and not args.api_key:
        raise UserError("--share opens a public link: give --api-key (the page's password) "
                        "too")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn binds)
        try:
            probe.bind((args.host, args.port))
        except OSError as error:
            fix = "another --port" if error.errno == errno.EADDRINUSE else \
                "an address of this machine for --host"
            raise UserError(f"--host {args.host} --port {args.port}: cannot listen there "
                            f"({error.strerror or error}); choose {fix}") from None


def train_config(args, flags: dict, base_config: str | None = None):
    """A ``TrainConfig`` from the positional items (one YAML file, key=value overrides) and
    flags; ``base_config`` is the file used when no YAML file is given."""
    from unitune.config import TrainConfig, build_config

    configs = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if len(configs) > 1:
        raise UserError(f"{args.command} takes one config file, got {len(configs)}: "
                        f"{', '.join(configs)}")
    return build_config(TrainConfig, configs[0] if configs else base_config, overrides, flags)
