"""``unitune compose``: an expression over named runs -> a composed adapter, optionally with
λ chosen by a sweep scored on a validation set (exact match) or, for unlearning, the largest λ
whose perplexity rise on a reference text stays within a bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from unitune.compose import arithmetic
from unitune.compose.expr import bind, parse
from unitune.errors import UserError
from unitune.run import is_run


def resolve(name: str, root: Path) -> Path:
    for candidate in (Path(name), root / name):
        if is_run(candidate):
            return candidate
    raise UserError(f"unknown module '{name}': no run at {name} or {root / name}")


def _load(expression: str, root: Path, lam: float | None) -> list[dict]:
    """The runs an expression names, loaded (weights, configs, run.json)."""
    return arithmetic.load_inputs([resolve(n, root) for _, n in bind(parse(expression), lam)])


def _combined(expression: str, lam: float | None, semantics: str, rank: int | None,
              inputs: list[dict]):
    """(weights, coefficients, names, delta rank) of an expression at one λ."""
    coefs, names = zip(*bind(parse(expression), lam), strict=True)
    if semantics == "delta":
        weights, r = arithmetic.combine_delta(inputs, list(coefs), rank)
        return weights, list(coefs), list(names), r
    if rank is not None:
        raise UserError("--rank applies to --semantics delta only")
    return arithmetic.combine(inputs, list(coefs)), list(coefs), list(names), None


def _check_rank(rank: int | None) -> None:
    if rank is not None and rank <= 0:
        raise UserError(f"--rank must be > 0, got {rank}")


def compose(expression: str, out: Path, root: Path = Path("."), lam: float | None = None,
            semantics: str = "params", rank: int | None = None, overwrite: bool = False,
            log=print, inputs: list[dict] | None = None) -> Path:
    """Write the composed adapter as a run; ``inputs``: the named runs, when already
    loaded."""
    _check_rank(rank)
    inputs = inputs or _load(expression, root, lam)
    weights, coefs, names, r = _combined(expression, lam, semantics, rank, inputs)
    warning = arithmetic.init_warning(inputs)
    if warning:
        log(warning)
    return arithmetic.write(inputs, weights, out, expression, coefs, names, r, overwrite)


def sweep(expression: str, out: Path, lams: list[float], root: Path = Path("."),
          eval_data: str | None = None, ppl_text: str | None = None, ppl_bound: float = 0.5,
          semantics: str = "params", rank: int | None = None, overwrite: bool = False,
          trust_remote_code: bool = False, log=print) -> dict:
    """Score every λ, pick one, write the composed adapter for it plus a table and a plot.
    ``trust_remote_code``: the runs' base model may run its own code."""
    from unitune import methods
    from unitune.data.readers import read_conversations
    from unitune.eval.exact_match import evaluate_exact_match
    from unitune.eval.perplexity import perplexity, read_reference, reference_windows
    from unitune.run import check_replaceable, open_model

    if not any(t.lam for t in parse(expression)):
        raise UserError("--sweep needs λ in the expression, e.g. 'chat - λ*toxic'")
    if not eval_data and not ppl_text:
        raise UserError("--sweep needs --eval-data (exact match) and/or --ppl-text "
                        "(perplexity bound)")
    if ppl_text and lams[0] != 0:
        raise UserError("a perplexity bound is measured against λ=0: start the sweep at 0")
    _check_rank(rank)
    check_replaceable(out, overwrite)
    records = read_conversations(eval_data) if eval_data else None
    reference = read_reference(ppl_text) if ppl_text else None
    rows = []
    # load the base and the adapter structure once; every λ only swaps the adapter weights
    scratch = out.with_name(out.name + ".sweep")
    inputs = _load(expression, root, lams[0])
    compose(expression, scratch, root, lams[0], semantics, rank, overwrite=True, log=log,
            inputs=inputs)
    try:
        model, tokenizer, template = open_model(scratch, trust_remote_code=trust_remote_code)
        windows = reference_windows(reference, tokenizer, template) if reference else None
        method = methods.get(inputs[0]["info"].method)
        for lam in lams:
            weights, *_ = _combined(expression, lam, semantics, rank, inputs)
            method.set_adapter_weights(model, weights)  # (copied onto the model's device)
            row = {"lambda": lam}
            if records:
                row["exact_match"] = evaluate_exact_match(model, tokenizer, template, records,
                                                          max_new_tokens=32).accuracy
            if windows:
                row["perplexity"] = perplexity(model, windows)
            rows.append(row)
            log("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reference:
        limit = rows[0]["perplexity"] + ppl_bound
        ok = [r for r in rows if r["perplexity"] <= limit]
        best = max(ok, key=lambda r: r["lambda"])
        rule = f"largest λ with perplexity <= {rows[0]['perplexity']:.3f} + {ppl_bound}"
    else:
        best = max(rows, key=lambda r: (r["exact_match"], -abs(r["lambda"] - 0.5)))
        rule = "highest exact match"
    weights, coefs, names, r = _combined(expression, best["lambda"], semantics, rank, inputs)
    result = {"expression": expression, "rule": rule, "chosen_lambda": best["lambda"],
              "points": rows}

    def report(folder: Path) -> None:
        (folder / "sweep.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        cols = list(rows[0])
        table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        table += ["| " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |" for r in rows]
        (folder / "sweep.md").write_text(f"{expression}: {rule}, chosen λ={best['lambda']:g}"
                                         "\n\n" + "\n".join(table) + "\n", encoding="utf-8")
        _plot(rows, folder / "sweep.png", best["lambda"], expression)

    arithmetic.write(inputs, weights, out, expression, coefs, names, r, overwrite, report)
    log(f"chosen λ={best['lambda']:g} ({rule}); adapter: {out}")
    return result


def _plot(rows: list[dict], path: Path, chosen: float, expression: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in ("exact_match", "perplexity") if k in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), dpi=100)
    axes = [axes] if len(metrics) == 1 else list(axes)
    lams = [r["lambda"] for r in rows]
    for ax, metric in zip(axes, metrics, strict=True):
        ax.plot(lams, [r[metric] for r in rows], marker="o")
        ax.axvline(chosen, color="red", linestyle="--", label=f"chosen λ={chosen:g}")
        ax.set_xlabel("λ")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(expression)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
