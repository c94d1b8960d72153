"""``unitune data ...`` (synth, families, templates, list, info, check, convert, preview,
stats, self-instruct) and ``unitune quickstart``: each reads, reports and writes through the
data modules; nothing here decides how data is parsed or masked."""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

from unitune.cli.common import (
    Parser,
    number,
    stderr,
    whole,
)
from unitune.errors import UserError


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
    return DATA_COMMANDS[args.data_command](args)


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


# ------------------------------------------------------------------ the data commands

def _self_instruct(args) -> int:
    from unitune.data.self_instruct import generate
    from unitune.eval.judge import Judge

    teacher = Judge(args.teacher_url, args.teacher_model, args.teacher_key,
                    max_tokens=args.max_tokens, temperature=args.temperature, role="teacher")
    report = generate(args.seed_tasks, teacher, Path(args.out), args.count, args.prompt_tasks,
                      args.max_similarity, args.seed, args.max_requests,
                      log=stderr)
    print(json.dumps(report, indent=1))
    return 0


def _synth(args) -> int:
    from unitune.data.synth import DEFAULT_FAMILIES, check_families, write_suite

    families = check_families(args.families.split(",") if args.families
                              else list(DEFAULT_FAMILIES))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to regenerate it")
    paths = write_suite(out, families, args.train, args.validation, args.test, args.pretrain,
                        args.seed)
    width = max(map(len, paths)) + 2
    for name, path in paths.items():
        print(f"{name:<{width}}{path}")
    return 0


def _families(args) -> int:
    from unitune.data.synth import DEFAULT_FAMILIES, FAMILIES

    for name, (lang, gen) in FAMILIES.items():
        ex = gen(random.Random(0))
        default = "*" if name in DEFAULT_FAMILIES else " "
        print(f"{default} {name:<12}{lang:<4}{ex.instruction}  {ex.input!r} -> {ex.output!r}")
    print("* = in the quickstart")
    return 0


def _templates(args) -> int:
    from unitune.data.templates import TEMPLATES

    for name, template in TEMPLATES.items():
        print(f"{name:<14}{template.reference}")
    return 0


def _list(args) -> int:
    from unitune.data.catalog import filter_entries, format_table

    entries = filter_entries(args.lang, args.task, args.gen)
    print(format_table(entries))
    print(f"{len(entries)} datasets; `unitune data info NAME` for details")
    return 0


def _info(args) -> int:
    from unitune.data.catalog import format_info, get_entry

    print(format_info(get_entry(args.name), Path(args.data_dir) if args.data_dir else None))
    return 0


def _check(args) -> int:
    from unitune.data.readers import iter_records

    bad = 0
    for path in args.files:
        problems: list[str] = []
        kinds: Counter = Counter()
        for rec in iter_records(path, args.format, skip_invalid=True, problems=problems):
            kinds[type(rec).__name__] += 1
        for problem in problems:
            stderr(problem)
        bad += len(problems)
        names = {"Conversation": "conversations", "PreferencePair": "preference pairs",
                 "Prompt": "prompts", "PlainText": "text records"}
        what = ", ".join(f"{n} {names[k]}" for k, n in kinds.items()) or "no valid records"
        print(f"{path}: {what}; {len(problems)} invalid")
    return 2 if bad else 0


def _convert(args) -> int:
    from unitune.data.readers import iter_records, to_json

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".partial")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:  # streamed: any size converts
            array = out.suffix == ".json"
            f.write("[\n" if array else "")
            for rec in iter_records(args.input, args.format):
                row = json.dumps(to_json(rec, args.to), ensure_ascii=False)
                f.write((",\n" if array and n else "") + row + ("" if array else "\n"))
                n += 1
            f.write("\n]\n" if array else "")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    print(f"wrote {n} records as {args.to} to {out}")
    return 0


def _boundaries(row: dict, tokenizer, width: int = 3) -> list[str]:
    """The token ids (and pieces) around every place where training switches on or off."""
    from unitune.data.encode import IGNORE

    ids, labels = row["input_ids"], row["labels"]
    lines = []
    for i in range(1, len(ids)):
        if (labels[i] != IGNORE) != (labels[i - 1] != IGNORE):
            window = range(max(0, i - width), min(len(ids), i + width))
            shown = " ".join(("| " if j == i else "") + f"{ids[j]}:{tokenizer.decode([ids[j]])!r}"
                             for j in window)
            lines.append(f"  {'trained from' if labels[i] != IGNORE else 'untrained from'} "
                         f"token {i}: {shown}")
    return lines


def _preview(args) -> int:
    """Examples as the model sees them: conversations with their trained tokens marked,
    preference pairs with each answer after the shared prompt, prompts alone as the policy
    is asked them (each kind in a file is shown as its stage encodes it)."""
    from unitune.data.readers import iter_accepted
    from unitune.data.schema import Conversation, PreferencePair, Prompt
    from unitune.run import open_tokenizer

    records = list(itertools.islice(iter_accepted(
        args.files, args.format, accept=(Conversation, PreferencePair, Prompt),
        purpose="a preview"), args.n))
    tokenizer, template = open_tokenizer(args.base_model, args.template)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    marks = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    shown = "green" if color else "[[...]]"
    shows = {Conversation: lambda convs: _preview_conversations(
                 convs, tokenizer, template, args.max_length, marks, shown, args.masking,
                 args.ids),
             PreferencePair: lambda pairs: _preview_pairs(
                 pairs, tokenizer, template, args.max_length, marks, shown),
             Prompt: lambda prompts: _preview_prompts(
                 prompts, tokenizer, template, args.max_length, marks, shown)}
    sections = 0
    for kind, show in shows.items():
        if chosen := [r for r in records if isinstance(r, kind)]:
            print("\n" * bool(sections), end="")
            show(chosen)
            sections += 1
    return 0


def _marked(tokenizer, ids: list[int], trained: list[bool], marks: tuple[str, str]) -> str:
    """The tokens' text, each run of trained tokens between ``marks``."""
    on, off = marks
    out, inside = [], False
    for tok, train in zip(ids, trained, strict=True):
        if train != inside:
            out.append(on if train else off)
            inside = train
        out.append(tokenizer.decode([tok]))
    return "".join(out) + (off if inside else "")


def _preview_conversations(convs, tokenizer, template, max_length: int, marks, shown,
                           masking: str, ids: bool) -> None:
    from unitune.data.encode import IGNORE, encode_conversations, prompt_mismatches

    rows, report = encode_conversations(convs, tokenizer, template, max_length, masking)
    print(f"template: {template.name}; trained tokens shown as {shown}; {report.summary()}")
    dropped = set(report.examples_dropped)  # rows hold only the examples that were kept
    for conv, row in zip([c for c in convs if c.where not in dropped], rows, strict=True):
        trained = [lab != IGNORE for lab in row["labels"]]
        print(f"\n--- {conv.where}: {len(row['input_ids'])} tokens, {sum(trained)} trained ---")
        print(_marked(tokenizer, row["input_ids"], trained, marks))
        if ids:
            print("\n".join(_boundaries(row, tokenizer)))
        for problem in prompt_mismatches(conv, tokenizer, template):
            print(f"warning: {conv.where}: {problem}")


def _preview_pairs(pairs, tokenizer, template, max_length: int, marks, shown) -> None:
    """Each pair as DPO encodes it: the shared prompt, then each answer (trained)."""
    from unitune.data.preference import encoded_rows

    rows = encoded_rows(pairs, tokenizer, template, max_length, "pairs")
    print(f"template: {template.name}; preference pairs, each answer after the shared prompt; "
          f"trained tokens shown as {shown}")
    for pair, row in zip(pairs, rows, strict=True):
        if row["dropped"]:
            longer = f" (at --max-length {max_length}; a larger one keeps it)" \
                if "max_length" in row["dropped"] else ""
            print(f"\n--- {pair.where}: dropped: {row['dropped']}{longer} ---")
            continue
        print(f"\n--- {pair.where}: {len(row['prompt_ids'])} prompt tokens; chosen "
              f"{len(row['chosen_ids'])}, rejected {len(row['rejected_ids'])} trained ---")
        print(_marked(tokenizer, row["prompt_ids"], [False] * len(row["prompt_ids"]), marks))
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_ids"]
            print(f"{side}: {_marked(tokenizer, ids, [True] * len(ids), marks)}")


def _preview_prompts(prompts, tokenizer, template, max_length: int, marks, shown) -> None:
    """Each prompt as GRPO / RLOO ask it (the policy's answer follows; nothing is trained on
    the prompt), with the reference answer rewards may check."""
    from unitune.data.encode import tokenize_ids
    from unitune.data.preference import encoded_rows

    rows = encoded_rows(prompts, tokenizer, template, max_length, "prompts")
    print(f"template: {template.name}; prompts alone, as the policy is asked them (its "
          "sampled answer is what trains)")
    for prompt, row in zip(prompts, rows, strict=True):
        if row["dropped"]:
            print(f"\n--- {prompt.where}: dropped: {row['dropped']} ---")
            continue
        (ids,) = tokenize_ids([row["prompt"]], tokenizer, template.add_special_tokens)
        reference = f"reference answer {row['answer']!r}" if row["answer"] else \
            "no reference answer"
        print(f"\n--- {prompt.where}: {len(ids)} prompt tokens; {reference} ---")
        print(_marked(tokenizer, ids, [False] * len(ids), marks))


def _stats(args) -> int:
    """Counts and token lengths of one kind of records, encoded as its stage encodes them:
    conversations (the whole example), preference pairs (the longer answer with its prompt)
    or prompts alone (the prompt the policy answers)."""
    import numpy as np

    from unitune.data import store
    from unitune.data.encode import encode_records
    from unitune.data.preference import encode_preferences, prompt_rows
    from unitune.data.readers import iter_accepted
    from unitune.data.schema import Conversation, PreferencePair, Prompt
    from unitune.data.sources import Invalid
    from unitune.run import open_tokenizer

    invalid = Invalid()
    tokenizer, template = open_tokenizer(args.base_model, args.template)
    with tempfile.TemporaryDirectory(prefix="unitune-stats-") as tmp:  # streamed: any size
        records = store.write(iter_accepted(
            args.files, args.format, skip_invalid=True, problems=invalid,
            accept=(Conversation, PreferencePair, Prompt), purpose="stats"),
            Path(tmp) / "records.arrow")
        if not len(records):
            raise UserError(f"no valid records in {', '.join(args.files)}")
        kind, counts = type(records[0]), Counter()
        for record in records:  # (one pass: the kind checked, what is counted counted)
            if not isinstance(record, kind):
                raise UserError(f"{record.where}: stats describe one kind of records at a "
                                f"time, and this one is not like {records[0].where}; keep each "
                                "kind in its own files")
            if kind is Conversation:
                counts["single"] += sum(t.role == "assistant" for t in record.turns) == 1
                counts["system"] += bool(record.system)
            elif kind is Prompt:
                counts["answered"] += bool(record.reference)
        encoded = Path(tmp) / "encoded.arrow"
        if kind is Conversation:
            single, system = counts["single"], counts["system"]
            what = [f"{len(records)} conversations", f"{single} single-turn, "
                    f"{len(records) - single} multi-turn", f"{system} with a system prompt"]
            measured = "tokens per example"
            _, report = encode_records(records, tokenizer, template, args.max_length,
                                       args.masking, False, encoded, progress=True)
        elif kind is PreferencePair:
            what = [f"{len(records)} preference pairs"]
            measured = "tokens per pair (its longer answer with the prompt)"
            _, report = encode_preferences(records, tokenizer, template, args.max_length,
                                           "pairs", encoded, progress=True)
        else:
            what = [f"{len(records)} prompts", f"{counts['answered']} with a reference answer"]
            measured = "prompt tokens"
            _, report = prompt_rows(records, tokenizer, template, args.max_length, encoded,
                                    progress=True)
        lengths = np.sort(report.lengths)

    def pct(q: float) -> int:
        return int(lengths[min(len(lengths) - 1, int(q * len(lengths)))])

    details = "; ".join([*what[1:], f"{invalid.count} invalid left out, see `unitune data "
                                    "check`"])
    print(f"records: {what[0]} ({details})")
    print(f"{measured} ({template.name} template): mean {lengths.mean():.0f}, "
          f"median {pct(0.5)}, p90 {pct(0.9)}, p99 {pct(0.99)}, max {lengths[-1]}")
    over = lengths >= args.max_length if kind is Prompt else lengths > args.max_length
    print(f"at max_length={args.max_length}: {int(over.sum())} "
          f"{'leave no room to answer' if kind is Prompt else 'longer'}; {report.summary()}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.hist(lengths, bins=50)
        ax.axvline(args.max_length, color="red", linestyle="--",
                   label=f"max_length={args.max_length}")
        ax.set_xlabel(f"{measured} ({template.name} template)")
        ax.set_ylabel("examples")
        ax.set_title(", ".join(Path(f).name for f in args.files))
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
        print(f"histogram: {args.plot}")
    return 0


DATA_COMMANDS = {"synth": _synth, "families": _families, "templates": _templates,
                 "list": _list, "info": _info, "check": _check, "convert": _convert,
                 "preview": _preview, "stats": _stats, "self-instruct": _self_instruct}
