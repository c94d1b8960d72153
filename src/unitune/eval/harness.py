"""Benchmarks on EleutherAI's lm-evaluation-harness: the model it scores and the report.

The model is either one ``open_model`` reopened (a base, a run, a composed or merged run, as
the evaluation's ``Answerer`` holds it: lm-evaluation-harness's ``HFLM`` around the model
object, adapters and patches included) or an
OpenAI-compatible endpoint (its ``local-completions``, e.g. ``unitune serve``: log-likelihoods
through ``echo`` + ``logprobs``). The harness does the log-likelihood and generation work; we
write the task folder (``eval/benchmarks.py``), pick the settings, keep every request's answer
in a cache (a rerun continues from it) and write the report: each benchmark's score with its
standard error and subjects, and the prompt format, shots, seed and versions behind them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from unitune.errors import UserError
from unitune.eval.answers import Answerer
from unitune.eval.benchmarks import TaskSet


def local_model(model: Answerer, batch_size: int | str):
    """(lm-evaluation-harness model, a key naming exactly this model for the cache): the
    harness's ``HFLM`` around the model the answerer's chat engine holds. ``batch_size``
    'auto': the harness finds the largest batch that fits."""
    from lm_eval.models.huggingface import HFLM

    engine = model.engine()
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # (object warning)
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=batch_size)
    return lm, _model_key(model.target, model.settings.get("template"),
                          model.settings.get("rope_scaling"))


def _model_key(target: str, template: str | None, rope_scaling: dict | None) -> str:
    from unitune.run import identity

    parts = [*identity(target), str(template), json.dumps(rope_scaling, sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


ENDPOINT_CONCURRENCY = 4  # requests in flight to an endpoint


def endpoint_model(url: str, model: str, tokenizer: str | None, api_key: str | None,
                   max_length: int):
    """lm-evaluation-harness's ``local-completions`` on ``url`` (.../v1). Log-likelihood tasks
    send token ids, counted with ``tokenizer`` (the served run's folder or its base)."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    logging.getLogger("lm_eval.models.api_models").setLevel(logging.ERROR)
    try:
        lm = LocalCompletionsAPI(
            base_url=url.rstrip("/") + "/completions", model=model,
            tokenizer_backend="huggingface" if tokenizer else "none", tokenizer=tokenizer,
            tokenized_requests=bool(tokenizer), max_length=max_length,
            num_concurrent=ENDPOINT_CONCURRENCY, max_retries=3,
            header={"Authorization": f"Bearer {api_key or 'none'}"})
    except (OSError, ValueError) as exc:
        raise UserError(f"--tokenizer {tokenizer}: not a tokenizer "
                        f"({str(exc).splitlines()[0][:120]})") from None
    if tokenizer:  # prompts start as the in-process harness starts them: with the BOS the
        tok = lm.tokenizer  # tokenizer adds (lm_eval's API client adds none by default)
        lm.add_bos_token = tok.bos_token_id is not None and \
            tok("a").input_ids[:1] == [tok.bos_token_id]
    return lm, hashlib.sha256(f"{url}\n{model}".encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("unitune", "lm_eval", "transformers", "peft", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def run_tasks(lm, key: str, tasks: TaskSet, protocol: str, cache_dir: Path | None,
              seed: int = 1234, limit: int | None = None, chat: bool | None = None,
              log=print) -> dict:
    """Evaluates every group of ``tasks`` on ``lm``; the report as a dict. ``chat``: apply the
    model's chat template (default: to the generation tasks of the harness protocol, when the
    model has one; log-likelihood tasks and InstructEval's prompts stay plain text)."""
    import aiohttp
    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    has_template = bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))
    if chat and not has_template:
        raise UserError("--chat: this model's tokenizer has no chat template; give a run "
                        "(it carries its template) or a base with one")
    manager = TaskManager(include_path=str(tasks.folder), include_defaults=False)
    report: dict = {"protocol": protocol, "seed": seed, "limit": limit,
                    "versions": _versions(), "benchmarks": {}}
    for group, subtasks in tasks.groups.items():
        use_chat = chat if chat is not None else (  # InstructEval prompts are plain text
            has_template and tasks.kinds[group] == "generation" and protocol == "harness")
        cache = None
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache = str(cache_dir / f"{key}-{group}-{protocol}-{int(use_chat)}-{seed}")
        log(f"{group.removeprefix('local_')}: {len(subtasks)} "
            f"subject{'s' * (len(subtasks) != 1)}, {tasks.shots[group]}-shot, "
            f"{'chat template' if use_chat else 'plain prompts'}")
        try:
            with _quiet_harness():
                out = simple_evaluate(
                    model=lm, tasks=[group], task_manager=manager, limit=limit,
                    random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                    fewshot_random_seed=seed, apply_chat_template=use_chat,
                    fewshot_as_multiturn=use_chat, use_cache=cache, log_samples=True,
                    bootstrap_iters=1000, verbosity="ERROR")
        except (ConnectionError, OSError, aiohttp.ClientError) as exc:
            raise UserError(f"{group.removeprefix('local_')}: the endpoint failed "
                            f"({str(exc).splitlines()[0][:200]}); check --served-model and "
                            "the server; answers so far are cached, rerun to continue") from None
        report["benchmarks"][group.removeprefix("local_")] = _summary(
            out, group, subtasks, tasks.shots[group], use_chat)
        report.setdefault("samples", {})[group] = out.get("samples", {})
    return report


@contextlib.contextmanager
def _quiet_harness():
    """The harness draws one progress bar per subject while it builds prompts (57 lines for
    MMLU): those are switched off, its bar over the model's requests stays. It also asks git
    for the working folder's commit (printing git's 'fatal: not a git repository' outside
    one) and collects torch's environment report, once per benchmark: the report carries
    its own versions (``_versions``), so neither runs."""
    import functools

    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator
    from tqdm import tqdm

    saved = evaluator.get_git_commit_hash, evaluator.add_env_info
    task_module.tqdm = functools.partial(tqdm, disable=True)
    evaluator.get_git_commit_hash, evaluator.add_env_info = lambda: None, lambda storage: None
    try:
        yield
    finally:
        task_module.tqdm = tqdm
        evaluator.get_git_commit_hash, evaluator.add_env_info = saved


def _metrics(entry: dict) -> dict[str, float]:
    """{'acc': .., 'acc_stderr': ..} from the harness's 'metric,filter' keys."""
    out = {}
    for name, value in entry.items():
        if "," not in name or not isinstance(value, (int, float)):
            continue
        metric, _ = name.split(",", 1)
        out[metric] = float(value)
    return out


def _summary(out: dict, group: str, subtasks: list[str], shots: int, chat: bool) -> dict:
    """A benchmark's scores: the group's (weighted by subject size), each subject's, the
    number of questions, the shots and the prompt format."""
    results = out["results"]
    n = out.get("n-samples", {})
    summary = {"shots": shots, "prompt_format": "chat template" if chat else "plain",
               "n": sum(n.get(t, {}).get("effective", 0) for t in subtasks),
               **_metrics(results.get(group, {}))}
    if len(subtasks) > 1:
        summary["subjects"] = {results[t].get("alias", t).strip(" -"): _metrics(results[t])
                               for t in subtasks if t in results}
    elif subtasks and subtasks[0] in results:  # one subject: all its metrics (DROP's em too)
        summary.update({k: v for k, v in _metrics(results[subtasks[0]]).items()
                        if k not in summary})
    return summary


def write_report(report: dict, path: Path) -> None:
    """The JSON report (samples in a side file) and a Markdown table next to it."""
    samples = report.pop("samples", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    if samples:
        with open(path.with_suffix(".samples.jsonl"), "w", encoding="utf-8") as f:
            for by_task in samples.values():
                for task, rows in by_task.items():
                    for row in rows:
                        f.write(json.dumps({"task": task, **row}, ensure_ascii=False,
                                           default=str) + "\n")
    path.with_suffix(".md").write_text(table(report) + "\n", encoding="utf-8")


def _count(b: dict):
    """How many questions a benchmark's score is over."""
    return next((b[k] for k in ("n", "problems", "questions", "prompts") if k in b), "")


FRACTIONS = ("acc", "acc_norm", "exact_match", "em", "f1", "score", "win_rate")  # and pass@k
RATINGS = ("rating", "turn_1", "turn_2", "relevance", "coherence")  # a judge's 1-5 or 1-10


def table(report: dict) -> str:
    """A Markdown table: benchmark, metric, score ± stderr, shots, prompt format, n (fractions
    as percentages; a judge's ratings on their own scale)."""
    head = [f"model: {report.get('model', '?')}"]
    if "protocol" in report:
        head += [f"protocol: {report['protocol']}", f"seed: {report['seed']}",
                 ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    lines = [" · ".join(head), "", "| benchmark | metric | score | ± | shots | prompt | n |",
             "|---|---|---|---|---|---|---|"]
    for name, b in report["benchmarks"].items():
        rows = len(lines)
        for metric, value in b.items():
            fraction = metric in FRACTIONS or metric.startswith("pass@")
            if not isinstance(value, float) or not (fraction or metric in RATINGS):
                continue
            err = b.get(f"{metric}_stderr")
            lines.append(f"| {name} | {metric} | {100 * value if fraction else value:.2f} | "
                         f"{'' if err is None else f'{100 * err:.2f}'} | {b.get('shots', 0)} | "
                         f"{b.get('prompt_format', 'plain')} | "
                         f"{_count(b)} |")
        if len(lines) == rows:  # (say so rather than leave the benchmark out)
            why = f"{b['unparsed']} judge replies without a rating" if b.get("unparsed") \
                else "nothing scored"
            lines.append(f"| {name} | - | no score: {why} | | {b.get('shots', 0)} | "
                         f"{b.get('prompt_format', 'plain')} | {_count(b)} |")
    return "\n".join(lines)
