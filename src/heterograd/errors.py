"""User-facing errors.

Every mistake a user can make (an unknown name, a malformed size, a missing
dataset file) raises `HeterogradError` with a single line that names the
problem and says how to fix it. The CLI prints that line and exits with code 2;
no traceback is shown for user errors.
"""

from __future__ import annotations

from collections.abc import Iterable


class HeterogradError(ValueError):
    """A user error: one line naming the problem and the fix."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> HeterogradError:
    """Build the standard error for an unknown name.

    >>> str(unknown_choice("rule", "foo", ["bp", "fa"]))
    "unknown rule 'foo'; valid choices: bp, fa"
    """
    return HeterogradError(f"unknown {kind} {value!r}; valid choices: {', '.join(sorted(choices))}")
