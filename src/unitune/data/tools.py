"""The ``unitune data ...`` commands: synth, families, templates, list, info, check, convert,
preview and stats. Each reads, reports and writes through the data modules; nothing here
decides how data is parsed or masked.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

from unitune.errors import UserError


def run(args) -> int:
    return {"synth": _synth, "families": _families, "templates": _templates, "list": _list,
            "info": _info, "check": _check, "convert": _convert, "preview": _preview,
            "stats": _stats}[args.data_command](args)


def _synth(args) -> int:
    from unitune.data.synth import DEFAULT_FAMILIES, check_families, write_suite

    families = check_families(args.families.split(",") if args.families
                              else list(DEFAULT_FAMILIES))
    for name in ("train", "validation", "test", "pretrain"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(args, name)}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to regenerate it")
    paths = write_suite(out, families, args.train, args.validation, args.test, args.pretrain,
                        args.seed)
    for name, path in paths.items():
        print(f"{name:<11}{path}")
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
    from unitune.data.templates import TEMPLATE_NOTES, TEMPLATES

    for name in TEMPLATES:
        print(f"{name:<14}{TEMPLATE_NOTES.get(name, '')}")
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
            print(problem, file=sys.stderr)
        bad += len(problems)
        names = {"Conversation": "conversations", "PreferencePair": "preference pairs",
                 "PlainText": "text records"}
        what = ", ".join(f"{n} {names[k]}" for k, n in kinds.items()) or "no valid records"
        print(f"{path}: {what}; {len(problems)} invalid")
    return 2 if bad else 0


def _convert(args) -> int:
    from unitune.data.readers import iter_records, to_json

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    rows = [to_json(rec, args.to) for rec in iter_records(args.input, args.format)]
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        if out.suffix == ".json":
            json.dump(rows, f, ensure_ascii=False, indent=1)
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"wrote {len(rows)} records as {args.to} to {out}")
    return 0


def _tokenizer_and_template(args):
    from unitune.models.loading import load_tokenizer, resolve_model_path, resolve_template

    path = resolve_model_path(args.base_model)
    tokenizer = load_tokenizer(path)
    return tokenizer, resolve_template(args.template, path, tokenizer)


def _preview(args) -> int:
    from unitune.data.encode import IGNORE, encode_conversations
    from unitune.data.readers import read_conversations

    if args.n <= 0:
        raise UserError(f"-n must be > 0, got {args.n}")
    convs = read_conversations(args.files, args.format)[: args.n]
    tokenizer, template = _tokenizer_and_template(args)
    rows, report = encode_conversations(convs, tokenizer, template, args.max_length,
                                        args.masking)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    on, off = ("\033[42;30m", "\033[0m") if color else ("[[", "]]")
    print(f"template: {template.name}; trained tokens shown as "
          f"{'green' if color else '[[...]]'}; {report.summary()}")
    for conv, row in zip(convs, rows, strict=False):
        out, trained = [], False
        for tok, lab in zip(row["input_ids"], row["labels"], strict=True):
            piece = tokenizer.decode([tok])
            if (lab != IGNORE) != trained:
                out.append(on if not trained else off)
                trained = not trained
            out.append(piece)
        if trained:
            out.append(off)
        n_trained = sum(lab != IGNORE for lab in row["labels"])
        print(f"\n--- {conv.where}: {len(row['input_ids'])} tokens, {n_trained} trained ---")
        print("".join(out))
    return 0


def _stats(args) -> int:
    from unitune.data.encode import encode_conversations
    from unitune.data.readers import read_conversations

    invalid: list[str] = []
    convs = read_conversations(args.files, args.format, skip_invalid=True, problems=invalid)
    if not convs:
        raise UserError(f"no valid records in {', '.join(args.files)}")
    tokenizer, template = _tokenizer_and_template(args)
    lengths = [len(ids) for ids in tokenizer([template.render(c, tokenizer)[0]
                                              for c in convs])["input_ids"]]
    _, report = encode_conversations(convs, tokenizer, template, args.max_length, args.masking)
    turns = Counter(sum(t.role == "assistant" for t in c.turns) for c in convs)
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    print(f"records: {len(convs)} ({turns.get(1, 0)} single-turn, "
          f"{len(convs) - turns.get(1, 0)} multi-turn; "
          f"{sum(bool(c.system) for c in convs)} with a system prompt; {len(invalid)} invalid "
          "left out, see `unitune data check`)")
    print(f"tokens ({template.name} template): mean {sum(lengths) / len(lengths):.0f}, "
          f"median {pct(0.5)}, p90 {pct(0.9)}, p99 {pct(0.99)}, max {ordered[-1]}")
    print(f"at max_length={args.max_length}: {sum(n > args.max_length for n in lengths)} "
          f"longer; {report.summary()}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.hist(lengths, bins=50)
        ax.axvline(args.max_length, color="red", linestyle="--",
                   label=f"max_length={args.max_length}")
        ax.set_xlabel(f"tokens per example ({template.name} template)")
        ax.set_ylabel("examples")
        ax.set_title(", ".join(Path(f).name for f in args.files))
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
        print(f"histogram: {args.plot}")
    return 0
