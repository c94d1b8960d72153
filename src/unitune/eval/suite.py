"""``unitune eval --tasks``: one report for any mix of benchmarks on one model.

``EvalSettings`` holds every setting a benchmark run depends on (the CLI's flags and a study's
``eval:`` section map one to one onto it, unknown keys rejected); ``evaluate`` opens the model
once, when a task first needs it, sends each task to its engine (the harness benchmarks to
lm-evaluation-harness, HumanEval to the sandbox, the judged tasks to the judge) and puts their
results in one report. Caches and samples sit next
to the report (``<stem>.cache/``, ``<stem>.<task>/``), so a rerun continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import PositiveInt, ValidationError, field_validator

from unitune.errors import UserError, did_you_mean
from unitune.eval.answers import Answerer
from unitune.eval.benchmarks import BENCHMARKS, PROTOCOLS, benchmark_folder
from unitune.models.rope import parse as parse_rope
from unitune.sections import Section

# graded by an LLM judge: the keys of grading.GRADED, named here so that checking a task name
# (and the CLI) need not import the graders
JUDGED = ("belle_eval", "impact", "mt_bench", "winrate")
TASKS = (*BENCHMARKS, "humaneval", *JUDGED)


class EvalSettings(Section):
    """What a benchmark run depends on (the report records it)."""

    tasks: list[str]
    data_dir: str
    protocol: Literal[PROTOCOLS] = "harness"  # type: ignore[valid-type]
    shots: int | None = None  # default: the sources' counts
    chat: bool | None = None  # default: generation tasks of a model with a chat template
    limit: int | None = None  # questions per subject
    seed: int = 1234
    batch_size: int | Literal["auto"] = 64  # auto: the harness finds what fits (see docs)
    max_new_tokens: int | None = None
    max_length: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    template: str | None = None
    trust_remote_code: bool = False
    static_cache: bool = False
    rope: str | None = None  # RoPE scaling TYPE:FACTOR (models/rope.py)
    served_model: str | None = None  # an endpoint target: the name it serves
    tokenizer: str | None = None  # an endpoint target: the tokenizer counting tokens
    api_key: str | None = None
    n: int = 1  # humaneval: samples per problem
    k: list[int] = [1]  # humaneval: pass@k
    temperature: float = 0.8  # humaneval sampling
    timeout: float = 10.0  # humaneval: seconds per program
    samples: str | None = None  # humaneval: the samples file (default: beside the report)
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key: str | None = None
    judge_max_tokens: PositiveInt = 2048  # judged tasks: the judge explains, then rates

    @field_validator("tasks", "k", mode="before")
    @classmethod
    def _split_commas(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] \
            if isinstance(value, str) else value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        for task in value:
            if task not in TASKS:
                raise ValueError(f"unknown task '{task}'{did_you_mean(task, TASKS)}; tasks: "
                                 f"{', '.join(TASKS)}")
        return value


def settings(source: str, **values) -> EvalSettings:
    """``EvalSettings`` from flags or a study's section; one-line errors naming ``source``."""
    try:
        return EvalSettings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown key{did_you_mean(where, EvalSettings.model_fields)}"
        raise UserError(f"{source}: {where}: {message}") from None


RESULTS = "eval"  # a run's folder of benchmark reports (``unitune eval compare`` reads them)


def default_report(target: str, s: EvalSettings) -> Path:
    """Where a report goes unless told: beside a run (``RUN/eval/TASKS.json``), else
    ``./eval-MODEL-TASKS.json``, named after the model so that another model's cached answers
    are never reused."""
    import re

    from unitune.run import is_run

    tasks = "+".join(s.tasks)
    endpoint = target.startswith(("http://", "https://"))
    if not endpoint and is_run(Path(target)):
        return Path(target) / RESULTS / f"{tasks}.json"
    name = s.served_model if endpoint else Path(target).name
    return Path(f"eval-{re.sub(r'[^A-Za-z0-9._-]+', '-', name or 'model')}-{tasks}.json")


def evaluate(target: str, s: EvalSettings, stem: Path, log=print) -> dict:
    """Every task of ``s`` on ``target`` (a run, a base model, or an endpoint URL)."""
    endpoint = target.startswith(("http://", "https://"))
    if endpoint and not s.served_model:
        raise UserError("an endpoint needs --served-model, the model name it serves")
    if endpoint and set(s.tasks) - set(BENCHMARKS):
        raise UserError(f"{', '.join(sorted(set(s.tasks) - set(BENCHMARKS)))} run on a local "
                        "model; an endpoint takes the harness benchmarks only")
    if endpoint and not s.tokenizer and (
            s.protocol == "harness" and set(s.tasks) & {"mmlu", "cmmlu", "ceval", "mmcu",
                                                        "crass", "hhh"} or "hhh" in s.tasks):
        raise UserError("log-likelihood tasks on an endpoint count tokens: give --tokenizer "
                        "(the served run's folder or its base)")
    judged = [t for t in s.tasks if t in JUDGED]
    if judged and not (s.judge_url and s.judge_model):
        raise UserError(f"{', '.join(judged)}: graded by an LLM: give --judge-url and "
                        "--judge-model")
    report: dict = {"model": s.served_model if endpoint else target, "benchmarks": {}}
    # one model for every local task, opened when a task first needs it
    model = None if endpoint else Answerer(
        target, s.device, log, keep_open=True, template=s.template,
        trust_remote_code=s.trust_remote_code, static_cache=s.static_cache,
        rope_scaling=parse_rope(s.rope))
    try:
        harness = [t for t in s.tasks if t in BENCHMARKS]
        if harness:
            report.update(_harness(target, model, s, harness, stem, log))
        for task in s.tasks:
            folder = benchmark_folder(s.data_dir, task)
            if task == "humaneval":
                from unitune.eval.humaneval import evaluate as humaneval

                samples = Path(s.samples) if s.samples else \
                    stem.with_name(stem.name + ".humaneval.jsonl")
                report["benchmarks"][task] = humaneval(
                    model, folder, samples, s.n, tuple(s.k), s.temperature,
                    s.max_new_tokens or 384, s.limit, s.seed, s.timeout, log=log)
            elif task in JUDGED:
                from unitune.eval.grading import GRADED
                from unitune.eval.judge import Judge
                from unitune.infer.generate import Decoding

                report["benchmarks"][task] = GRADED[task](
                    model, folder, Judge(s.judge_url, s.judge_model, s.judge_key,
                                         max_tokens=s.judge_max_tokens),
                    stem.with_name(f"{stem.name}.{task}"),
                    Decoding(max_new_tokens=s.max_new_tokens or 512), s.limit, log=log)
    finally:
        if model is not None:
            model.close()
    return report


def _harness(target: str, model: Answerer | None, s: EvalSettings, tasks: list[str],
             stem: Path, log) -> dict:
    """The benchmarks lm-evaluation-harness scores, on the model (None: the endpoint
    ``target``)."""
    from unitune.eval.benchmarks import check_shots, read_benchmarks, write_tasks
    from unitune.eval.harness import endpoint_model, local_model, run_tasks

    cache = Path(f"{stem}.cache")
    # bad files and too few examples for the shots fail before any model loads
    benchmarks = read_benchmarks(tasks, s.data_dir, log)
    check_shots(benchmarks, s.shots)
    if model is None:
        lm, key = endpoint_model(target, s.served_model, s.tokenizer, s.api_key,
                                 s.max_length or 2048)
    else:
        lm, key = local_model(model, s.batch_size)
    context = min(s.max_length or lm.max_length, lm.max_length)
    cap = min(s.max_new_tokens or 256, context // 2)  # prompt and answer must both fit
    taskset = write_tasks(benchmarks, cache / "tasks" / f"{s.protocol}-"
                          f"{'default' if s.shots is None else s.shots}-shot", s.protocol,
                          s.shots, cap)
    return run_tasks(lm, key, taskset, s.protocol, cache, seed=s.seed, limit=s.limit,
                     chat=s.chat, log=log)
