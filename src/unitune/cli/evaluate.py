"""``unitune eval``, ``eval compare``, ``study`` and ``arena``: measuring models."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unitune.cli.common import (
    PORT,
    add_decoding,
    add_engine,
    check_address,
    decoding_of,
    named_targets,
    number,
    rope_of,
    stderr,
    whole,
)
from unitune.errors import UserError


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run, a base model or an endpoint: benchmarks "
                       "(MMLU, CMMLU, C-Eval, MMCU, BBH, CRASS, HHH, DROP, HumanEval, "
                       "Belle-Eval), perplexity, exact match on a file",
                       description="--tasks NAMES --data-dir DIR: benchmarks from their official "
                       "files in DIR (one folder per benchmark: mmlu/, cmmlu/, ceval/, mmcu/, "
                       "bbh/, crass/, hhh/, drop/, humaneval/, belle_eval/). The multiple-"
                       "choice, BBH, HHH and DROP tasks run on lm-evaluation-harness (in "
                       "process, or on an OpenAI-compatible endpoint given as TARGET "
                       "http://.../v1); HumanEval runs the generated code in a sandbox; "
                       "belle_eval, impact (relevance, coherence 1-5), mt_bench (1-10) and "
                       "winrate (against a reference model's outputs) are graded by an LLM "
                       "(--judge-url, --judge-model). Every "
                       "answer is cached next to --report: a rerun continues. --perplexity "
                       "FILE: sliding-window perplexity. --data FILE: exact match on an Alpaca "
                       "file (--reward RM_RUN: and the reward model's mean reward of the "
                       "answers). --preference FILE: how often the model (a reward model: by "
                       "its score; any other: by log-likelihood) prefers the chosen answer of "
                       "each preference pair.")
    add_engine(p, several=False)
    p.add_argument("--data", help="Alpaca json/jsonl file with reference outputs (exact match)")
    p.add_argument("--reward", metavar="RM_RUN", help="--data: also score every answer with "
                   "this reward model (a stage=rm run)")
    p.add_argument("--match", choices=["exact", "number"], default="exact",
                   help="--data: compare whole answers, or final numbers (GSM8K-style math: "
                   "the reference's after its '####')")
    p.add_argument("--preference", metavar="FILE", help="preference pairs: pairwise accuracy")
    p.add_argument("--perplexity", metavar="FILE", help="perplexity on a text file (.txt, "
                   "{\"text\"} records; conversations are scored on their replies)")
    p.add_argument("--window", type=whole(1), default=512,
                   help="--perplexity: tokens per window (sliding over long texts)")
    p.add_argument("--stride", type=whole(1), default=512,
                   help="--perplexity: new tokens per window (< --window: overlapping "
                   "context, as in the module-arithmetic paper's protocol)")
    tasks = p.add_argument("--tasks")
    help_without_tasks = p.format_help

    def format_help() -> str:  # the benchmarks' module is imported only when help is asked for
        from unitune.eval.suite import TASKS

        tasks.help = f"benchmark tasks, comma-separated: {', '.join(TASKS)}"
        return help_without_tasks()

    p.format_help = format_help
    p.add_argument("--data-dir", help="--tasks: the directory holding the benchmarks' files")
    p.add_argument("--protocol", choices=["harness", "instructeval"], default="harness",
                   help="harness: lm-evaluation-harness's prompts and log-likelihood scoring; "
                   "instructeval: InstructEval's (Flacuna's tables): the generated answer must "
                   "start with the right letter, HHH asked in both orders")
    p.add_argument("--shots", type=whole(0), help="few-shot examples (default: the sources': 5 "
                   "MMLU/CMMLU/C-Eval, 3 BBH/CRASS/DROP, 0 HHH)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the model's chat template (default: for generation "
                   "tasks of a model that has one; log-likelihood tasks stay plain)")
    p.add_argument("--served-model", help="an endpoint TARGET: the model name it serves")
    p.add_argument("--tokenizer", help="an endpoint TARGET: the tokenizer (a run folder or "
                   "its base) that counts tokens for log-likelihood tasks")
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="an endpoint TARGET: its API key (default: $UNITUNE_API_KEY)")
    p.add_argument("--max-length", type=whole(1), help="context length in tokens (default: the "
                   "model's; 2048 for an endpoint)")
    p.add_argument("--max-new-tokens", type=whole(1), default=None,
                   help="answer length (default: 64 for --data, 384 humaneval, 512 belle_eval)")
    p.add_argument("--batch-size", type=_batch_size, help="examples per batch (default 64; "
                   "a generation batch out of GPU memory is answered again in halves; "
                   "--tasks: 'auto' has lm-evaluation-harness find the largest batch that "
                   "fits, sized for the model's whole context on generation tasks)")
    p.add_argument("--n", type=whole(1), default=1, help="humaneval: samples per problem (greedy "
                   "when 1, else sampled at --temperature)")
    p.add_argument("--k", default="1", help="humaneval: pass@k to report, e.g. 1,10")
    p.add_argument("--temperature", type=number(0, strict=False), default=0.8,
                   help="humaneval with --n > 1: the sampling temperature (> 0)")
    p.add_argument("--seed", type=int, default=1234, help="the seed of sampling and of the "
                   "harness's few-shot sampler")
    p.add_argument("--limit", type=whole(1), help="only the first N questions of each subject")
    p.add_argument("--timeout", type=number(0), default=10.0,
                   help="humaneval: seconds each program may run")
    p.add_argument("--samples", help="humaneval: JSON lines of every sample (a rerun "
                   "continues from it; default: REPORT.humaneval.jsonl, else "
                   "eval.humaneval.jsonl)")
    p.add_argument("--judge-url", help="judged tasks: the grading LLM, an OpenAI-compatible "
                   "endpoint (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--judge-model", help="judged tasks: the judge's model name")
    p.add_argument("--judge-key", default=os.environ.get("UNITUNE_JUDGE_KEY"),
                   help="judged tasks: the judge's API key (default: $UNITUNE_JUDGE_KEY)")
    p.add_argument("--judge-max-tokens", type=whole(1), default=2048,
                   help="judged tasks: the judge's reply budget (it explains, then rates; "
                   "lower it for a judge with a short context)")
    p.add_argument("--report", help="write the full result as JSON here (--tasks: also .md and "
                   ".samples.jsonl beside it; default RUN/eval/TASKS.json for a run, else "
                   "./eval-MODEL-TASKS.json; caches and answers go beside it, so a rerun "
                   "continues)")


def _batch_size(value: str) -> int | str:
    if value == "auto" or (value.isdigit() and int(value) > 0):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {value!r}")


def _fixed_batch(args) -> int:
    """--batch-size where the harness does not size it (``auto``: the default, 64)."""
    return 64 if args.batch_size in (None, "auto") else args.batch_size


def cmd_eval(args) -> int:
    if sum(map(bool, (args.data, args.tasks, args.perplexity, args.preference))) != 1:
        raise UserError("unitune eval: give one of --data FILE (exact match), --tasks NAMES "
                        "(benchmarks), --perplexity FILE and --preference FILE")
    if args.reward and not args.data:
        raise UserError("--reward scores the answers of --data FILE; give --data")
    if args.match != "exact" and not args.data:
        raise UserError("--match compares the answers of --data FILE; give --data")
    if args.tasks:
        return _eval_tasks(args)
    if args.perplexity:
        return _eval_perplexity(args)
    if args.preference:
        return _eval_preference(args)
    from unitune.eval.exact_match import evaluate_file, write_report

    result = evaluate_file(args.target, args.data, args.max_new_tokens or 64,
                           _fixed_batch(args), args.match, args.reward, args.device,
                           args.template, args.trust_remote_code, rope_of(args), log=stderr)
    print(result.table())
    if args.report:
        write_report(result, Path(args.report))
    return 0


def _eval_preference(args) -> int:
    import json

    from unitune.data.readers import iter_accepted
    from unitune.data.schema import PreferencePair
    from unitune.eval.preference import evaluate_preferences

    pairs = list(iter_accepted(args.preference, accept=(PreferencePair,),
                               purpose="--preference"))
    result = evaluate_preferences(args.target, pairs, args.device, args.template,
                                  args.trust_remote_code, args.max_length,
                                  min(_fixed_batch(args), 16), log=stderr)
    print(result.table())
    if args.report:
        Path(args.report).write_text(json.dumps(result.as_dict(), indent=1), encoding="utf-8")
    return 0


def _eval_perplexity(args) -> int:
    import json

    from unitune.eval.perplexity import evaluate_perplexity

    result = evaluate_perplexity(args.target, args.perplexity, args.window, args.stride,
                                 args.device, args.template, args.trust_remote_code,
                                 args.rope, log=stderr)
    print(json.dumps(result, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


def _eval_tasks(args) -> int:
    from unitune.eval.harness import table, write_report
    from unitune.eval.suite import EvalSettings, default_report, evaluate, settings

    if not args.data_dir:
        raise UserError("--tasks needs --data-dir, the directory with the benchmarks' files "
                        "(one folder per benchmark, or the benchmark's own folder)")
    s = settings("unitune eval", **{n: getattr(args, n) for n in EvalSettings.model_fields
                                    if getattr(args, n, None) is not None})  # (one flag each)
    report_path = Path(args.report) if args.report else default_report(args.target, s)
    report = evaluate(args.target, s, report_path.with_suffix(""), log=stderr)
    write_report(report, report_path)
    print(table(report))
    beside = [".md"] + [".samples.jsonl"] * report_path.with_suffix(".samples.jsonl").exists()
    stderr(f"report: {report_path} (and {', '.join(beside)})")
    return 0


def add_study(sub) -> None:
    p = sub.add_parser("study", help="a grid of train + eval runs (base models x methods x data "
                       "mixes x seeds) and its comparison report",
                       description="Trains and evaluates every point of STUDY.yaml's grid "
                       "(output_dir, train: shared training keys, grid: the axes, eval: test "
                       "file and benchmark settings), keeping finished runs and results and "
                       "resuming partial runs, then writes OUT/study.md (every run, means over "
                       "seeds, a pivot of the first two axes), study.json and the pictures "
                       "study_loss.png and study_scores.png.")
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the grid's runs and stop")
    p.add_argument("--no-progress", action="store_true")


def cmd_study(args) -> int:
    from unitune.eval.study import load_study, plan, run_study

    study = load_study(args.study)
    if args.dry_run:
        for name, cfg, _ in plan(study, args.study)[0]:
            print(f"{name}\t{cfg.output_dir}")
        return 0
    report = run_study(study, args.study, log=stderr, progress=not args.no_progress)
    print(Path(study.output_dir, "study.md").read_text(encoding="utf-8"), end="")
    return 0 if report["runs"] else 1


def add_eval_compare(sub) -> None:
    p = sub.add_parser("eval-compare", prog="unitune eval compare",
                       help="`unitune eval compare RUNS...`: finished results side by side",
                       description="Finished results side by side: run folders (their "
                       "losses and the reports under RUN/eval/) and `unitune eval` reports; "
                       "metrics by rows, the best of each in bold.")
    p.add_argument("results", nargs="+", metavar="RUN_OR_REPORT")
    p.add_argument("-o", "--out", help="also write OUT.md, OUT.json and OUT.png")


def cmd_eval_compare(args) -> int:
    from unitune.eval.study import compare_results

    print(compare_results(args.results, Path(args.out) if args.out else None))
    return 0


def add_arena(sub) -> None:
    p = sub.add_parser("arena", help="models answer the same prompts, a judge (an LLM or a "
                       "person) compares them pairwise; Elo and Bradley-Terry leaderboard",
                       description="Each --model answers every prompt of --prompts (any "
                       "conversation format, or .txt with one prompt per line: the first user "
                       "turn is asked); an OpenAI-compatible judge (unitune serve included) "
                       "compares every pair with positions randomised, or, with --human, a "
                       "person does on a web page; the leaderboard (Elo and Bradley-Terry with "
                       "bootstrap intervals) is written to -o as Markdown, JSON and PNG. "
                       "Answers and judgments are cached there: a rerun continues.")
    p.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                   help="a contestant: a run or a base model (repeat, at least twice)")
    p.add_argument("--prompts", required=True)
    p.add_argument("--judge-url", help="the judging LLM, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model")
    p.add_argument("--judge-key", default=os.environ.get("UNITUNE_JUDGE_KEY"),
                   help="the judge's API key (default: $UNITUNE_JUDGE_KEY)")
    p.add_argument("--human", action="store_true", help="a person judges on a web page "
                   "(the answers shown side by side, models hidden)")
    p.add_argument("--host", default="127.0.0.1", help="--human: the page's address")
    p.add_argument("--port", type=PORT, default=7861, help="--human: the page's port")
    p.add_argument("--api-key", default=os.environ.get("UNITUNE_API_KEY"),
                   help="--human: the page's password (user 'unitune'); needed to listen "
                   "beyond 127.0.0.1")
    p.add_argument("-o", "--out", required=True, help="folder for answers, judgments, results")
    p.add_argument("--limit", type=whole(1), help="only the first N prompts")
    p.add_argument("--rounds", type=whole(1), default=200, help="bootstrap resamples")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_decoding(p, max_new_tokens=256)


def cmd_arena(args) -> int:
    from unitune.eval.answers import read_prompts
    from unitune.eval.arena import Judge, run_arena

    models = named_targets("--model", args.model)
    if args.human == bool(args.judge_url and args.judge_model):
        raise UserError("give a judge: --judge-url and --judge-model (an LLM), or --human "
                        "(a person on a web page)")
    questions = read_prompts(args.prompts)[:args.limit]
    if not questions:
        raise UserError(f"{args.prompts}: no prompts")
    if args.human:
        return _human_arena(args, models, questions)
    run_arena(models, questions, Judge(args.judge_url, args.judge_model, args.judge_key),
              Path(args.out), decoding_of(args), args.seed or 0, args.rounds, args.device,
              stderr)
    print(Path(args.out, "leaderboard.md").read_text(encoding="utf-8"), end="")
    return 0


def _human_arena(args, models: dict[str, str], questions: list[str]) -> int:
    from unitune.eval.arena import arena_answers
    from unitune.serve.web import HumanArena, build_arena_ui

    check_address(args)
    out = Path(args.out)
    answers = arena_answers(models, questions, out, decoding_of(args), args.device, stderr)
    arena = HumanArena(list(models), questions, answers, out, args.seed or 0, args.rounds,
                       stderr)
    stderr(f"arena page on http://{args.host}:{args.port} ({len(arena.pending())} "
            f"comparisons to judge; votes go to {out / 'judgments.jsonl'})")
    build_arena_ui(arena).queue().launch(
        server_name=args.host, server_port=args.port, quiet=True,
        auth=("unitune", args.api_key) if args.api_key else None)
    return 0
