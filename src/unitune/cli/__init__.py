"""The ``unitune`` command line: parses arguments and calls the package; no logic of its own.

User errors (``UserError``, bad flags) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import os
import sys

from unitune.cli.common import Parser, unknown_flags_message
from unitune.cli.data import add_data, add_quickstart, cmd_data, cmd_quickstart
from unitune.cli.evaluate import (
    add_arena,
    add_eval,
    add_eval_compare,
    add_study,
    cmd_arena,
    cmd_eval,
    cmd_eval_compare,
    cmd_study,
)
from unitune.cli.infer import (
    add_chat,
    add_generate,
    add_predict,
    add_serve,
    add_web,
    cmd_chat,
    cmd_generate,
    cmd_predict,
    cmd_serve,
    cmd_web,
)
from unitune.cli.train import (
    add_compare,
    add_compose,
    add_export,
    add_merge,
    add_train,
    add_vocab,
    cmd_compare,
    cmd_compose,
    cmd_export,
    cmd_merge,
    cmd_train,
    cmd_vocab,
    expression_first,
)
from unitune.errors import UserError

COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "data": cmd_data,
            "quickstart": cmd_quickstart, "compare": cmd_compare, "compose": cmd_compose,
            "merge": cmd_merge, "chat": cmd_chat, "predict": cmd_predict, "serve": cmd_serve,
            "web": cmd_web, "export": cmd_export, "arena": cmd_arena, "study": cmd_study,
            "eval-compare": cmd_eval_compare, "vocab": cmd_vocab}


def build_parser() -> Parser:
    from unitune import __version__

    parser = Parser(prog="unitune", description="Instruction fine-tuning of LLMs.")
    parser.add_argument("--version", action="version", version=f"unitune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                parser_class=Parser)
    for add in (add_quickstart, add_data, add_train, add_compare, add_compose, add_merge,
                add_generate, add_chat, add_predict, add_serve, add_web, add_export,
                add_eval, add_eval_compare, add_arena, add_study, add_vocab):
        add(sub)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:2] == ["eval", "compare"]:  # `unitune eval compare RUNS...`
            argv = ["eval-compare", *argv[2:]]
        args, extra = parser.parse_known_args(expression_first(parser, argv))
        if hasattr(args, "items"):  # key=value overrides may also come after the flags
            args.items += [e for e in extra if not e.startswith("-")]
            extra = [e for e in extra if e.startswith("-")]
        if extra:
            sub_parser = parser._subparsers._group_actions[0].choices[args.command]
            while sub_parser._subparsers is not None:  # data ..., export ...
                action = sub_parser._subparsers._group_actions[0]
                sub_parser = action.choices[getattr(args, action.dest)]
            raise UserError(f"unitune {args.command}: "
                            f"{unknown_flags_message(sub_parser, extra)}")
        if "transformers" in sys.modules:  # imported already: it has read the variable above
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `unitune data list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

