"""Markdown tables, as the reports of studies, sweeps and arenas write them."""

from __future__ import annotations


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in body])
