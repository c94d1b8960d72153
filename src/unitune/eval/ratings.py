"""Ratings from pairwise comparisons (an arena): Elo and Bradley-Terry, with bootstrap
confidence intervals, as a leaderboard table and a plot.

A comparison is ``(model_a, model_b, outcome)`` with outcome 1 (a wins), 0 (b wins) or 0.5
(tie). Elo is computed online over the comparisons in a shuffled order (K=4, base 1000, scale
400, as Chatbot Arena's notebook); Bradley-Terry by maximum likelihood (minorisation-
maximisation, ties as half a win each way), reported on the Elo scale. Intervals are the
2.5th and 97.5th percentiles over bootstrap resamples of the comparisons.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from unitune.tables import markdown_table

Comparison = tuple[str, str, float]
BASE, SCALE = 1000.0, 400.0  # the rating scale: a mean of 1000, 400 points = 10x the odds
ELO_K = 4.0  # a small step: Elo over many shuffled games, as Chatbot Arena computes it
BT_ITERATIONS = 200


def elo(comparisons: list[Comparison], seed: int = 0) -> dict[str, float]:
    rating: dict[str, float] = {}
    order = list(comparisons)
    random.Random(seed).shuffle(order)
    for a, b, outcome in order:
        ra, rb = rating.setdefault(a, BASE), rating.setdefault(b, BASE)
        expected = 1.0 / (1.0 + 10 ** ((rb - ra) / SCALE))
        rating[a] = ra + ELO_K * (outcome - expected)
        rating[b] = rb - ELO_K * (outcome - expected)
    return rating


def bradley_terry(comparisons: list[Comparison]) -> dict[str, float]:
    """Strengths by the MM algorithm (Hunter 2004), on the Elo scale (mean ``BASE``)."""
    models = sorted({m for a, b, _ in comparisons for m in (a, b)})
    wins = {m: 0.0 for m in models}
    games: dict[tuple[str, str], float] = {}
    for a, b, outcome in comparisons:
        wins[a] += outcome
        wins[b] += 1.0 - outcome
        key = (a, b) if a < b else (b, a)
        games[key] = games.get(key, 0.0) + 1.0
    strength = {m: 1.0 for m in models}
    for _ in range(BT_ITERATIONS):
        new = {}
        for m in models:
            denom = sum(n / (strength[m] + strength[o]) for (x, y), n in games.items()
                        for o in ((y,) if x == m else (x,) if y == m else ()))
            new[m] = max(wins[m], 1e-3) / denom if denom else strength[m]
        norm = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        strength = {m: v / norm for m, v in new.items()}
    return {m: BASE + SCALE * math.log10(v) for m, v in strength.items()}


def leaderboard(comparisons: list[Comparison], rounds: int = 200, seed: int = 0) -> list[dict]:
    """One row per model, best first: Elo and Bradley-Terry with 95% bootstrap intervals,
    wins / losses / ties."""
    if not comparisons:
        return []
    rng = random.Random(seed)
    samples: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        resample = [comparisons[rng.randrange(len(comparisons))] for _ in comparisons]
        for name, ratings in (("elo", elo(resample, seed=r)), ("bt", bradley_terry(resample))):
            for model, value in ratings.items():
                samples.setdefault(model, {}).setdefault(name, []).append(value)
    point_elo, point_bt = elo(comparisons, seed=seed), bradley_terry(comparisons)
    rows = []
    for model in point_bt:
        record = {"model": model, "elo": point_elo[model], "bt": point_bt[model],
                  "wins": sum(o == 1 for a, _, o in comparisons if a == model)
                  + sum(o == 0 for _, b, o in comparisons if b == model),
                  "losses": sum(o == 0 for a, _, o in comparisons if a == model)
                  + sum(o == 1 for _, b, o in comparisons if b == model),
                  "ties": sum(o == 0.5 for a, b, o in comparisons if model in (a, b))}
        for name in ("elo", "bt"):
            values = sorted(samples.get(model, {}).get(name, [record[name]]))
            record[f"{name}_low"] = values[int(0.025 * (len(values) - 1))]
            record[f"{name}_high"] = values[int(math.ceil(0.975 * (len(values) - 1)))]
        rows.append(record)
    return sorted(rows, key=lambda row: -row["bt"])


def markdown(rows: list[dict]) -> str:
    return markdown_table(
        ["rank", "model", "Bradley-Terry (95% CI)", "Elo (95% CI)", "wins", "losses", "ties"],
        [[str(rank), r["model"], f"{r['bt']:.0f} ({r['bt_low']:.0f}-{r['bt_high']:.0f})",
          f"{r['elo']:.0f} ({r['elo_low']:.0f}-{r['elo_high']:.0f})", str(r["wins"]),
          str(r["losses"]), str(r["ties"])] for rank, r in enumerate(rows, 1)]) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(rows) + 1.2), dpi=100)
    names = [r["model"] for r in rows][::-1]
    for i, r in enumerate(rows[::-1]):
        ax.errorbar(r["bt"], i, xerr=[[r["bt"] - r["bt_low"]], [r["bt_high"] - r["bt"]]],
                    fmt="o", capsize=4)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("Bradley-Terry rating (Elo scale), 95% bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
