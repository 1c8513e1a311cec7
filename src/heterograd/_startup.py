"""What the command line needs before anything heavy is imported: a quiet Ctrl-C during start-up.

Importing torch and the package takes seconds; a Ctrl-C then would raise ``KeyboardInterrupt`` deep inside an
import (a traceback, or worse a half-imported library). When this process *is* the ``heterograd`` command
(``heterograd ...`` or ``python -m heterograd ...``), SIGINT during start-up prints one line and exits with 130
at once; `startup_done` (called by `heterograd.cli.main`) puts Python's handler back. Imported as a
library, nothing changes.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def running_as_cli(argv: list[str] | None = None) -> bool:
    """Whether the command line of this process runs heterograd's CLI (``sys.orig_argv`` by default)."""
    args = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    if "-m" in args[1:]:
        i = args.index("-m", 1)
        return i + 1 < len(args) and args[i + 1] in ("heterograd", "heterograd.cli")
    return len(args) >= 2 and os.path.basename(args[1]).removesuffix(".exe") == "heterograd"


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"interrupted during start-up; nothing was run\n")
    os._exit(128 + signum)


def quiet_startup_interrupts() -> None:
    """Install `_exit_quietly` for SIGINT when this process is the ``heterograd`` command."""
    if running_as_cli() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_quietly)


def startup_done() -> None:
    """Start-up is over: SIGINT raises ``KeyboardInterrupt`` again (the CLI and the trainer handle it)."""
    if signal.getsignal(signal.SIGINT) is _exit_quietly:
        signal.signal(signal.SIGINT, signal.default_int_handler)


quiet_startup_interrupts()
