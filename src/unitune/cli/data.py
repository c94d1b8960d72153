"""``unitune data ...`` and ``unitune quickstart``."""

from __future__ import annotations

import os
from pathlib import Path

from unitune.cli.common import (
    Parser,
    number,
    whole,
)


def add_data(sub) -> None:
    p = sub.add_parser("data", help="data tools: catalog, synthetic suite, check, convert, "
                       "preview, stats")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="data-command",
                            parser_class=Parser)
    s = dsub.add_parser("synth", help="write the synthetic instruction-task suite",
                        description="Deterministic synthetic tasks with exact answers, in "
                        "Alpaca JSON: train/validation/test splits, preference pairs on the "
                        "train and validation inputs (the exact answer chosen; a wrong or wordy "
                        "one rejected), and a raw pre-training corpus.")
    s.add_argument("--out", default="data/synth", help="output folder (default data/synth)")
    s.add_argument("--families", default=None,
                   help="comma-separated task families (default: the quickstart's)")
    s.add_argument("--train", type=whole(0), default=400, help="training examples per family")
    s.add_argument("--validation", type=whole(0), default=20, help="validation examples per family")
    s.add_argument("--test", type=whole(0), default=40, help="test examples per family")
    s.add_argument("--pretrain", type=whole(0), default=0,
                   help="extra raw examples per family for pretrain.json")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    dsub.add_parser("families", help="list the synthetic task families")
    dsub.add_parser("templates", help="list the prompt templates")
    ls = dsub.add_parser("list", help="the dataset catalog, with tags and filters")
    ls.add_argument("--lang", help="EN, CN or ML")
    ls.add_argument("--task", help="MT (multi-task) or TS (task-specific)")
    ls.add_argument("--gen", help="HG, SI, MIX or COL")
    info = dsub.add_parser("info", help="one catalog dataset: tags, size, where it lives")
    info.add_argument("name")
    info.add_argument("--data-dir", help="where catalog datasets are downloaded")
    ck = dsub.add_parser("check", help="validate files; report every bad record as "
                         "file:line: field: problem")
    ck.add_argument("files", nargs="+")
    ck.add_argument("--format", default="auto", help="reader format (default: detect)")
    cv = dsub.add_parser("convert", help="convert a file to another format")
    cv.add_argument("input")
    cv.add_argument("output", help=".jsonl (one record per line) or .json (an array)")
    to = cv.add_argument("--to", required=True)
    help_without_formats = cv.format_help

    def format_help() -> str:  # the readers are imported only when help is asked for
        from unitune.data.readers import FORMATS

        to.help = ", ".join(FORMATS)
        return help_without_formats()

    cv.format_help = format_help
    cv.add_argument("--format", default="auto", help="input format (default: detect)")
    cv.add_argument("--overwrite", action="store_true")
    si = dsub.add_parser("self-instruct", help="generate instruction data from seed tasks "
                         "with a teacher LLM (Stanford Alpaca's pipeline)",
                         description="Asks an OpenAI-compatible teacher (unitune serve "
                         "included) to continue numbered lists of example tasks, parses the "
                         "replies, keeps the tasks that pass Alpaca's filters and are not "
                         "ROUGE-L-similar to one already kept, and appends them to -o as "
                         "Alpaca JSON lines (a rerun continues); reports the teacher's tokens.")
    si.add_argument("--seed-tasks", required=True, help="self-instruct seed tasks (jsonl) or an "
                    "Alpaca file")
    si.add_argument("--teacher-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    si.add_argument("--teacher-model", required=True)
    si.add_argument("--teacher-key", default=os.environ.get("UNITUNE_TEACHER_KEY"),
                    help="the teacher's API key (default: $UNITUNE_TEACHER_KEY)")
    si.add_argument("-n", "--count", type=whole(1), default=100, help="tasks to generate")
    si.add_argument("-o", "--out", required=True, help="JSON lines (Alpaca format)")
    si.add_argument("--prompt-tasks", type=whole(1), default=3, help="example tasks per request")
    si.add_argument("--max-similarity", type=number(0), default=0.7,
                    help="ROUGE-L above which a new instruction is a duplicate")
    si.add_argument("--max-requests", type=whole(1), help="give up after this many replies "
                    "(default 4 per task)")
    si.add_argument("--max-tokens", type=whole(1), default=1024, help="the teacher's reply length")
    si.add_argument("--temperature", type=number(0, strict=False), default=1.0)
    si.add_argument("--seed", type=int, default=0)
    for name, helptext in (("preview", "render examples through a template and mark the "
                            "trained tokens (conversations, preference pairs, prompts "
                            "alone)"),
                           ("stats", "counts, token lengths (histogram PNG), truncation at "
                            "max_length (conversations, preference pairs or prompts "
                            "alone)")):
        q = dsub.add_parser(name, help=helptext)
        q.add_argument("files", nargs="+")
        q.add_argument("--format", default="auto")
        q.add_argument("--base-model", default="tiny-llama",
                       help="whose tokenizer to use (preset, folder or hub id)")
        q.add_argument("--template", default="auto")
        q.add_argument("--max-length", type=whole(1), default=512)
        q.add_argument("--masking", choices=["assistant", "last", "all"], default="assistant",
                       help="conversations: which replies train (a pair trains each answer; a "
                       "prompt alone, nothing)")
        if name == "preview":
            q.add_argument("-n", type=whole(1), default=2, help="how many examples")
            q.add_argument("--color", choices=["auto", "always", "never"], default="auto")
            q.add_argument("--ids", action="store_true", help="conversations: also show the "
                           "token ids around every place where training starts or stops")
        else:
            q.add_argument("--plot", help="write the length histogram PNG here")


def cmd_data(args) -> int:
    from unitune.data import tools

    return tools.run(args)


def add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole idea on CPU in minutes: data, tiny model, "
                       "exact match before and after LoRA",
                       description="Build the synthetic data and the tiny base (cached after "
                       "the first run), measure held-out exact match, fine-tune with LoRA, "
                       "measure again.")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--size", choices=["full", "smoke"], default="full",
                   help="smoke: a seconds-long run that exercises the plumbing only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def cmd_quickstart(args) -> int:
    from unitune.quickstart import run_quickstart

    run_quickstart(Path(args.out), size=args.size, overwrite=args.overwrite, seed=args.seed,
                   progress=not args.no_progress)
    return 0
