"""``unitune compose``: an expression over named runs -> a composed run, optionally with its
parameters (λ, or several) chosen by a sweep scored on a validation set (exact match) or, for
unlearning, the largest λ whose perplexity rise on a reference text stays within a bound."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from unitune.compose.arithmetic import Combiner
from unitune.compose.expr import LAMBDA, parse
from unitune.errors import UserError
from unitune.run import is_run
from unitune.tables import markdown_table


def resolve(name: str, root: Path) -> Path:
    for candidate in (Path(name).expanduser(), root / name):
        if is_run(candidate):
            return candidate
    raise UserError(f"unknown module '{name}': no run at {name} or {root / name}")


class Composition:
    """An expression with its runs resolved, like terms collected by folder (``a`` and
    ``./a`` are one module) and the runs loaded once for any parameter values."""

    def __init__(self, expression: str, root: Path, params: set[str], combine: str = "paper",
                 rank: int | None = None, density: float | None = None,
                 majority_sign: str = "total", seed: int = 0,
                 trust_remote_code: bool = False, log=print):
        self.expression = parse(expression, params, lambda n: any(
            is_run(p) for p in (Path(n).expanduser(), root / n)))
        folders, keys, self.names, self._slot = [], [], [], []
        for name in self.expression.terms:
            folder = resolve(name, root)
            key = folder.resolve()
            if key not in keys:
                folders.append(folder)
                keys.append(key)
                self.names.append(name)
            self._slot.append(keys.index(key))
        self.combiner = Combiner(folders, combine, rank, density, majority_sign, seed,
                                 trust_remote_code, log)

    def coefs(self, values: dict[str, float]) -> list[float]:
        out = [0.0] * len(self.names)
        for (coef, _), slot in zip(self.expression.bind(values), self._slot, strict=True):
            out[slot] += coef
        return out

    def write(self, values: dict[str, float], out: Path, overwrite: bool, extra=None) -> Path:
        coefs = self.coefs(values)
        return self.combiner.write(self.combiner.weights(coefs), out, self.expression.text,
                                   coefs, self.names, overwrite, extra)


def compose(expression: str, out: Path, root: Path = Path("."),
            values: dict[str, float] | None = None, combine: str = "paper",
            rank: int | None = None, density: float | None = None,
            majority_sign: str = "total", seed: int = 0, overwrite: bool = False,
            trust_remote_code: bool = False, log=print) -> Path:
    """Write the composed run; ``values``: the expression's parameters (``{"λ": 0.3}``)."""
    values = values or {}
    comp = Composition(expression, root, set(values), combine, rank, density, majority_sign,
                       seed, trust_remote_code, log)
    comp.expression.bind(values)  # every parameter set, none unused: before any weights load
    warning = comp.combiner.init_warning()
    if warning:
        log(warning)
    return comp.write(values, out, overwrite)


def sweep(expression: str, out: Path, grid: dict[str, list[float]], root: Path = Path("."),
          eval_data: str | None = None, ppl_text: str | None = None, ppl_bound: float = 0.5,
          values: dict[str, float] | None = None, combine: str = "paper",
          rank: int | None = None, density: float | None = None, majority_sign: str = "total",
          seed: int = 0, max_new_tokens: int = 32, overwrite: bool = False,
          trust_remote_code: bool = False, log=print) -> dict:
    """Score every point of ``grid`` (parameter -> values; ``values`` fixes others), pick
    one, write the composed run for it plus a table (``sweep.json``, ``sweep.md``) and a plot.
    ``trust_remote_code``: the runs' base model may run its own code."""
    from unitune.data.readers import read_conversations
    from unitune.eval.exact_match import evaluate_exact_match
    from unitune.eval.perplexity import perplexity, read_reference, reference_windows
    from unitune.run import check_replaceable, open_model

    fixed = values or {}
    comp = Composition(expression, root, set(grid) | set(fixed), combine, rank, density,
                       majority_sign, seed, trust_remote_code, log)
    swept = [p for p in grid if p in comp.expression.params]
    if not swept:
        raise UserError(f"--sweep needs a parameter of the expression, e.g. 'chat - λ*toxic' "
                        f"with --sweep '{LAMBDA}=0:1:0.1'")
    if not eval_data and not ppl_text:
        raise UserError("--sweep needs --eval-data (exact match) and/or --ppl-text "
                        "(perplexity bound)")
    if ppl_text and any(grid[p][0] != 0 for p in swept):
        raise UserError("a perplexity bound is measured against λ=0: start every sweep at 0")
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    comp.expression.bind({**points[0], **fixed})
    check_replaceable(out, overwrite)
    records = read_conversations(eval_data) if eval_data else None
    reference = read_reference(ppl_text) if ppl_text else None
    warning = comp.combiner.init_warning()
    if warning:
        log(warning)
    rows = []
    # load the base and the adapter structure once; every point only swaps the weights
    scratch = out.with_name(out.name + ".sweep")
    comp.write({**points[0], **fixed}, scratch, overwrite=True)
    try:
        model, tokenizer, template = open_model(scratch, device="cpu" if comp.combiner.inputs[
            0].family == "full" else "auto", trust_remote_code=trust_remote_code, log=log)
        windows = reference_windows(reference, tokenizer, template) if reference else None
        for point in points:
            comp.combiner.apply(model, comp.combiner.weights(comp.coefs({**point, **fixed})))
            row = dict(point)
            if records:
                row["exact_match"] = evaluate_exact_match(
                    model, tokenizer, template, records, max_new_tokens=max_new_tokens).accuracy
            if windows:
                row["perplexity"] = perplexity(model, windows)
            rows.append(row)
            log("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if reference:
        limit = rows[0]["perplexity"] + ppl_bound
        best = max((r for r in rows if r["perplexity"] <= limit),
                   key=lambda r: sum(r[p] for p in swept))
        rule = f"largest {', '.join(swept)} with perplexity <= {rows[0]['perplexity']:.4g} + " \
               f"{ppl_bound:g}"
    else:
        # ties go to the point nearest the middle of the grid
        mid = {p: (grid[p][0] + grid[p][-1]) / 2 for p in swept}
        best = max(rows, key=lambda r: (r["exact_match"],
                                        -sum(abs(r[p] - mid[p]) for p in swept)))
        rule = "highest exact match"
    chosen = {p: best[p] for p in swept}
    result = {"expression": expression, "combine": combine, "rule": rule, "chosen": chosen,
              "fixed": fixed, "points": rows}
    said = ", ".join(f"{k}={v:g}" for k, v in chosen.items())

    def report(folder: Path) -> None:
        (folder / "sweep.json").write_text(json.dumps(result, indent=1, ensure_ascii=False),
                                           encoding="utf-8")
        table = markdown_table(list(rows[0]), [[f"{v:.4g}" for v in r.values()] for r in rows])
        (folder / "sweep.md").write_text(f"{expression}: {rule}, chosen {said}\n\n{table}\n",
                                         encoding="utf-8")
        if len(swept) <= 2:
            _plot(rows, swept, folder / "sweep.png", chosen, expression)

    comp.write({**chosen, **fixed}, out, overwrite, report)
    log(f"chosen {said} ({rule}); composed run: {out}")
    return result


def _plot(rows: list[dict], swept: list[str], path: Path, chosen: dict, expression: str
          ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in ("exact_match", "perplexity") if k in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), dpi=100)
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        if len(swept) == 1:
            p = swept[0]
            ax.plot([r[p] for r in rows], [r[metric] for r in rows], marker="o")
            ax.axvline(chosen[p], color="red", linestyle="--", label=f"chosen {p}={chosen[p]:g}")
            ax.set_xlabel(p)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        else:
            xs = sorted({r[swept[0]] for r in rows})
            ys = sorted({r[swept[1]] for r in rows})
            grid = [[next(r[metric] for r in rows if r[swept[0]] == x and r[swept[1]] == y)
                     for x in xs] for y in ys]
            image = ax.imshow(grid, origin="lower", aspect="auto",
                              extent=(xs[0], xs[-1], ys[0], ys[-1]))
            ax.plot(chosen[swept[0]], chosen[swept[1]], "r*", markersize=12)
            ax.set_xlabel(swept[0])
            ax.set_ylabel(swept[1])
            ax.set_title(metric)
            fig.colorbar(image, ax=ax)
    fig.suptitle(expression)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
