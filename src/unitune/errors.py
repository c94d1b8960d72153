"""User-facing errors: one line, exit code 2, no traceback (the CLI catches ``UserError``)."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem with the user's input (file, config, flag) rather than a bug in unitune."""


def did_you_mean(name: str, choices) -> str:
    """A ' (did you mean 'x'?)' hint for a misspelled name, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
