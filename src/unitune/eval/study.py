"""Studies: a grid of train + eval runs (base models x methods x data mixes x seeds, any
training key as an axis), resumable, and the comparison report of the Alpaca-CoT study; and
``unitune eval compare``, finished results side by side.

A study file::

    output_dir: runs/study
    train: {base_model: tiny-llama, max_steps: 60}     # every run's training keys
    grid:                                             # the axes: a list of values each;
      method: [lora, ia3]                             # `data` may name its mixes
      data: {count: [data/synth/count.json], all: [data/synth/train.json]}
      seed: [0, 1]
    eval:
      test: data/synth/test.json                      # exact match, overall and per family
      benchmarks: {tasks: mmlu, data_dir: eval/, limit: 20}   # `unitune eval` settings

Each point trains into ``<output_dir>/runs/<name>`` (a finished run is kept, a partial one
resumed; one trained with other settings is an error) and its results are kept in
``<output_dir>/results/<name>.json`` with the eval settings behind them; a rerun does only
what is missing or what the eval settings changed. The report (``study.md/.json``,
``study_loss.png``, ``study_scores.png``) has every run, the means over seeds with their
spread, and a pivot of the first two axes.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unitune.errors import UserError, did_you_mean
from unitune.sections import Section
from unitune.tables import markdown_table


class StudyEval(Section):
    test: str | None = None  # exact match on this file, per task family
    max_new_tokens: int = 32
    benchmarks: dict[str, Any] | None = None  # EvalSettings keys


class Study(Section):
    output_dir: str
    train: dict[str, Any] = {}
    grid: dict[str, list[Any] | dict[str, Any]]
    eval: StudyEval = StudyEval()


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and Path(value).exists():  # a local file or folder: its name
        text = Path(value).stem
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:40]


def load_study(path: str | Path) -> Study:
    from unitune.sections import load_yaml

    data = load_yaml(path)
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:  # (a misspelt key first: it explains a missing one)
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in err["loc"])
        known = Study.model_fields if len(err["loc"]) == 1 else StudyEval.model_fields
        hint = did_you_mean(str(err["loc"][-1]), known) if err["type"] == "extra_forbidden" \
            else ""
        raise UserError(f"{path}: {where}: {err['msg']}{hint}") from None
    for axis, values in study.grid.items():
        if not values:
            raise UserError(f"{path}: grid.{axis}: no values")
    return study


def points(study: Study) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(run name, training keys, axis labels) for every point of the grid, in order."""
    axes = [[(axis, name, value) for name, value in values.items()] if isinstance(values, dict)
            else [(axis, _label(v), v) for v in values] for axis, values in study.grid.items()]
    out = []
    for combo in itertools.product(*axes):
        keys = dict(study.train)
        labels = {}
        for axis, label, value in combo:
            keys[axis] = value
            labels[axis] = label
        name = ".".join(f"s{label}" if axis == "seed" else label for axis, label, _ in combo)
        if any(name == other for other, _, _ in out):
            raise UserError(f"two grid points are both named '{name}'; name the values of "
                            f"their axis yourself ({', '.join(study.grid)}: {{name: value}})")
        out.append((name, keys, labels))
    return out


def plan(study: Study, source: str):
    """(every point's (name, ``TrainConfig``, axis labels), the benchmarks' ``EvalSettings`` or
    None), all validated before anything trains."""
    from unitune.config import TrainConfig, describe_error

    settings = None
    if study.eval.benchmarks is not None:
        from unitune.eval.suite import settings as eval_settings

        settings = eval_settings(f"{source}: eval.benchmarks", **study.eval.benchmarks)
    configs = []
    for name, keys, labels in points(study):
        keys = {**keys, "output_dir": str(Path(study.output_dir) / "runs" / name)}
        try:
            configs.append((name, TrainConfig.model_validate(keys), labels))
        except ValidationError as exc:
            raise UserError(f"{source}: grid point {name}: " + describe_error(
                exc.errors()[0], TrainConfig, "train/grid")) from None
    return configs, settings


def run_study(study: Study, source: str, log=print, progress: bool = True) -> dict:
    """Trains and evaluates what is missing, then writes the report; returns it. ``source``
    names the study in errors (its file)."""
    from unitune.run import PARTIAL, is_run, read_run
    from unitune.train.recipe import train

    configs, settings = plan(study, source)
    out = Path(study.output_dir)
    (out / "results").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, cfg, labels) in enumerate(configs, 1):
        run = Path(cfg.output_dir)
        _check_settings(run, cfg)
        result = out / "results" / f"{name}.json"
        asked = study.eval.model_dump(mode="json")
        kept = json.loads(result.read_text(encoding="utf-8")) if result.exists() else {}
        if kept.get("eval") == asked and is_run(run) and read_run(run).status == "finished":
            log(f"[{i}/{len(configs)}] {name}: done")
            rows.append(kept["row"])
            continue
        if not (is_run(run) and read_run(run).status == "finished"):
            partial = is_run(run.with_name(run.name + PARTIAL))
            log(f"[{i}/{len(configs)}] {name}: {'resuming' if partial else 'training'}")
            train(cfg, log=log, progress=progress, resume_from=partial)
        log(f"[{i}/{len(configs)}] {name}: evaluating")
        row = {"run": name, **labels, **_evaluate(run, study, settings, out, name, log)}
        result.write_text(json.dumps({"eval": asked, "row": row}, indent=1,
                                     ensure_ascii=False), encoding="utf-8")
        rows.append(row)
    report = write_report(rows, list(study.grid), out)
    log(f"report: {out / 'study.md'}")
    return report


def _check_settings(run: Path, cfg) -> None:
    """A run already there (finished or partial) must have been trained as the study says:
    a changed study file would otherwise compare runs trained differently."""
    from unitune.config import TrainConfig, with_absolute_paths
    from unitune.run import CONFIG_YAML, PARTIAL, stored_config

    for folder in (run, run.with_name(run.name + PARTIAL)):
        if not (folder / CONFIG_YAML).exists():
            continue
        ignore = {"output_dir", "overwrite"}
        planned = with_absolute_paths(cfg).model_dump(mode="json", exclude=ignore)
        trained = TrainConfig.model_validate(stored_config(folder)).model_dump(
            mode="json", exclude=ignore)
        changed = [k for k in cfg.model_fields_set - ignore  # (what the study sets; the
                   if planned[k] != trained.get(k)]              # rest resolves at training)
        if changed:
            k = changed[0]
            raise UserError(f"{folder} was trained with {k}={trained.get(k)!r}, the study now "
                            f"says {planned[k]!r}"
                            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
                            "delete the run or give the study another output_dir")


def _evaluate(run: Path, study: Study, settings, out: Path, name: str, log) -> dict:
    from unitune.run import read_run
    from unitune.train.callbacks import read_metrics

    info = read_run(run)
    logged, val = read_metrics(run / "metrics.jsonl", "loss", "eval_loss")
    row: dict[str, Any] = {
        "trainable_%": 100 * info.trainable_parameters / info.total_parameters
        if info.trainable_parameters and info.total_parameters else None,
        "train_loss_last": logged[-1][1] if logged else info.metrics.get("train_loss"),
        "val_loss": val[-1][1] if val else info.metrics.get("eval_loss"),
        "seconds": info.metrics.get("train_runtime_s")}
    if study.eval.test:
        from unitune.data.readers import read_conversations
        from unitune.eval.exact_match import evaluate_exact_match
        from unitune.run import open_model

        model, tokenizer, template = open_model(run, log=log)
        em = evaluate_exact_match(model, tokenizer, template,
                                  read_conversations(study.eval.test),
                                  max_new_tokens=study.eval.max_new_tokens)
        row["exact_match"] = em.accuracy
        row.update({f"em/{family}": v for family, v in sorted(em.per_family.items())})
        del model  # (the benchmarks load their own: never two copies at once)
        import gc

        gc.collect()
    if settings is not None:
        from unitune.eval.suite import evaluate

        report = evaluate(str(run), settings, out / "results" / f"{name}.benchmarks", log=log)
        row.update(flatten(report["benchmarks"]))
    return row


def flatten(benchmarks: dict) -> dict[str, float]:
    """{'mmlu/acc': 0.31, 'humaneval/pass@1': 0.1, ...}: each benchmark's headline numbers."""
    from unitune.eval.harness import FRACTIONS, RATINGS

    return {f"{name}/{metric}": value for name, b in benchmarks.items()
            for metric, value in b.items() if isinstance(value, float)
            and (metric in FRACTIONS or metric in RATINGS or metric.startswith("pass@"))}


# ---------------------------------------------------------------------------- the report

def _fmt(metric: str, value) -> str:
    """Fractions as percentages, a judge's ratings and losses as they are."""
    from unitune.eval.harness import FRACTIONS

    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    last = metric.rsplit("/", 1)[-1]
    if metric.startswith("em/") or last in FRACTIONS or last.startswith("pass@"):
        return f"{value:.1%}"
    return f"{value:.2f}" if metric in ("trainable_%", "seconds") else f"{value:.3f}"


def _metrics(rows: list[dict], axes: list[str]) -> list[str]:
    skip = {"run", *axes}
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in skip and k not in seen]
    return seen


def _headline(metrics: list[str]) -> str:
    for metric in ("exact_match", *(m for m in metrics if "/" in m and not m.startswith(
            "em/")), "val_loss", "train_loss_last"):
        if metric in metrics:
            return metric
    return metrics[0]


def write_report(rows: list[dict], axes: list[str], out: Path) -> dict:
    metrics = _metrics(rows, axes)
    headline = _headline(metrics)
    varying = [a for a in axes if len({r[a] for r in rows}) > 1 and a != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[a] for a in axes if a != "seed"), []).append(row)
    means = []
    for key, members in groups.items():
        entry = dict(zip([a for a in axes if a != "seed"], key, strict=True))
        entry["runs"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if isinstance(r.get(m), (int, float))]
            entry[m] = statistics.fmean(values) if values else None
            entry[f"{m}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        means.append(entry)
    report = {"axes": axes, "headline": headline, "runs": rows, "means": means}
    (out / "study.json").write_text(json.dumps(report, indent=1, ensure_ascii=False),
                                    encoding="utf-8")
    lines = [f"# Study: {len(rows)} runs over {', '.join(axes)}", "",
             f"Headline metric: `{headline}`. Every run:", "",
             markdown_table(["run", *metrics], [[r["run"], *(_fmt(m, r.get(m)) for m in metrics)]
                                                for r in rows])]
    if "seed" in axes and any(e["runs"] > 1 for e in means):
        keys = [a for a in axes if a != "seed"]
        lines += ["", "Mean over seeds (± standard deviation):", "", markdown_table(
            [*keys, "runs", *metrics],
            [[*(str(e[a]) for a in keys), str(e["runs"]), *(
                _fmt(m, e[m]) + ("" if e[f"{m}_sd"] is None else f" ± {_fmt(m, e[f'{m}_sd'])}")
                for m in metrics)] for e in means])]
    if len(varying) >= 2:
        a, b = varying[:2]
        cols = list(dict.fromkeys(e[b] for e in means))
        cells: dict = {}
        for e in means:
            if isinstance(e[headline], (int, float)):
                cells.setdefault(e[a], {}).setdefault(e[b], []).append(e[headline])
        table = {r: {c: statistics.fmean(v) for c, v in row.items()} for r, row in cells.items()}
        lines += ["", f"`{headline}` by {a} (rows) and {b} (columns), mean over the other axes:",
                  "", markdown_table([a, *map(str, cols)], [
                      [str(r), *(_fmt(headline, table[r].get(c)) for c in cols)]
                      for r in table])]
    lines += ["", "![training loss](study_loss.png)", "", "![scores](study_scores.png)", ""]
    (out / "study.md").write_text("\n".join(lines), encoding="utf-8")
    _plot_losses(rows, out)
    _plot_scores(means, headline, [a for a in axes if a != "seed"], out)
    return report


def _plot_losses(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unitune.train.callbacks import read_metrics

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for row in rows:
        (logged,) = read_metrics(out / "runs" / row["run"] / "metrics.jsonl", "loss")
        if logged:
            ax.plot(*zip(*logged, strict=True), label=row["run"], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("training loss of every run")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study_loss.png")
    plt.close(fig)


def _plot_scores(means: list[dict], headline: str, keys: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [" / ".join(str(e[k]) for k in keys) or "all" for e in means]
    values = [e[headline] or 0.0 for e in means]
    errors = [e.get(f"{headline}_sd") or 0.0 for e in means]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(means)), 4), dpi=100)
    ax.bar(range(len(means)), values, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(means)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(headline)
    ax.set_title(f"{headline}: mean over seeds (bars: sd)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "study_scores.png")
    plt.close(fig)


# ---------------------------------------------------------------------------- eval compare

def _results_of(path: Path) -> tuple[str, dict[str, Any]]:
    """(a column name, its numbers) for a run folder, an eval report or a study folder."""
    from unitune.eval.suite import RESULTS
    from unitune.run import is_run, read_run

    if path.is_dir() and (path / "study.json").exists():
        raise UserError(f"{path}: a study; its report is {path / 'study.md'} (compare its "
                        "runs: runs/<name>)")
    if path.is_dir() and is_run(path):
        info = read_run(path)
        numbers: dict[str, Any] = {k: v for k, v in info.metrics.items()
                                   if k in ("train_loss", "eval_loss") and v is not None}
        for report in sorted((path / RESULTS).glob("*.json")):
            numbers.update(flatten(_read_report(report)["benchmarks"]))
        return path.name, numbers
    if path.suffix == ".json" and path.exists():
        return path.stem, flatten(_read_report(path)["benchmarks"])
    raise UserError(f"{path}: not a run folder or an eval report (.json); give finished runs "
                    "or the --report files of `unitune eval`")


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), dict):
        raise UserError(f"{path}: not a `unitune eval --tasks` report (no 'benchmarks')")
    return report


def compare_results(paths: list[str], out: Path | None = None) -> str:
    """A Markdown table, metrics by rows and inputs by columns (the best of each row in
    bold); with ``out``, also ``out.json`` and ``out.png``."""
    columns = [_results_of(Path(p)) for p in paths]
    names = [n for n, _ in columns]
    if len(set(names)) < len(names):  # same folder names: tell them apart by their parents
        names = [str(Path(p)) for p in paths]
    metrics: list[str] = []
    for _, numbers in columns:
        metrics += [m for m in numbers if m not in metrics]
    if not metrics:
        raise UserError("nothing to compare: none of these has evaluation results")
    body = []
    for m in metrics:
        values = [numbers.get(m) for _, numbers in columns]
        present = [v for v in values if isinstance(v, (int, float))]
        lower_better = "loss" in m
        best = (min if lower_better else max)(present) if len(present) > 1 else None
        body.append([m, *("-" if v is None else f"**{_fmt(m, v)}**" if v == best
                          else _fmt(m, v) for v in values)])
    table = markdown_table(["metric", *names], body)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(
            dict(zip(names, [n for _, n in columns], strict=True)), indent=1), encoding="utf-8")
        out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
        _plot_compare(names, columns, [m for m in metrics if "loss" not in m],
                      out.with_suffix(".png"))
    return table


def _plot_compare(names: list[str], columns, metrics: list[str], path: Path) -> None:
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(metrics) * len(names) ** 0.5), 4), dpi=100)
    for i, (name, (_, numbers)) in enumerate(zip(names, columns, strict=True)):
        ax.bar([j + i * width for j in range(len(metrics))],
               [numbers.get(m) or 0.0 for m in metrics], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=30,
                  ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("results side by side")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
