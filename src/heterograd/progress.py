"""Progress of long loops: a tqdm bar on a terminal, a few plain lines in a log.

A bar redraws itself many times a second; written to a file (CI, a batch job, ``| tee``) every redraw
becomes a line. `Progress` therefore shows the bar only when its stream is a terminal and
otherwise prints one line per finished phase (an epoch, a generation), thinned to at most ``lines``
lines per loop (the last phase always gets its line).
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (``isatty``); False for files, pipes and captures."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Progress of one loop of ``total`` units (steps, generations).

    Args:
        total: units in the whole loop; initial: units already done (a resumed run).
        desc: prefix of the bar and of every line, e.g. ``"hsp on digits"``.
        unit: what one unit is called on the bar.
        enabled: ``False`` shows nothing at all.
        lines: at most this many phase lines per loop when the stream is not a terminal.
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        initial: int = 0,
        lines: int = 10,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.desc, self.enabled, self.lines = desc, enabled, max(1, lines)
        self.interactive = enabled and is_terminal(self.stream)
        self.bar: Any = None
        if self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, file=self.stream)

    def update(self, n: int = 1, **postfix: str) -> None:
        """Advance the bar by ``n`` units (and set its postfix); nothing in a log."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(n)

    def phase(self, done: int, of: int, text: str) -> None:
        """Phase ``done`` of ``of`` finished (1-based): a line ``desc: text`` in a log, at most ``lines`` per loop."""
        if not self.enabled or self.interactive:
            return
        every = max(1, math.ceil(of / self.lines))
        if done % every == 0 or done == of:
            print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar (logs need nothing)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
