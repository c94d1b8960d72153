"""User-facing errors: one line, exit code 2, no traceback (the CLI catches ``UserError``)."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem with the user's input (file, config, flag) rather than a bug in unitune."""


def closest(name: str, choices, cutoff: float = 0.6) -> str | None:
    """The choice ``name`` most likely misspells, or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelled name, or an empty string."""
    close = closest(name, choices)
    return f" (did you mean '{close}'?)" if close else ""
