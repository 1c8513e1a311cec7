"""TensorBoard logging of a run (optional extra ``heterograd[tensorboard]``), through ``torch.utils.tensorboard``.

Every logged row of ``metrics.csv`` becomes scalars at its step, one tag per column (``train_loss``,
``test_loss``, ``test_accuracy``, ``phi_1``, ``align_1``, ``dc_score``, ...: the tag is the column
name), and the run's configuration is stored once as text (tag ``config``). Read it with
``tensorboard --logdir DIR/tensorboard``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import HeterogradError

#: columns of a metrics row that are coordinates or labels, not scalars
NOT_SCALARS = frozenset({"step", "epoch", "diverged"})


def require_tensorboard() -> None:
    """Raise a clear `HeterogradError` when the ``tensorboard`` package (the extra) is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:  # torch raises this when the tensorboard package is missing
        raise HeterogradError(
            "--tensorboard needs the TensorBoard extra: pip install 'heterograd[tensorboard]' (or drop --tensorboard)"
        ) from None


class TensorBoardLog:
    """Writes a run's metrics rows and config to ``log_dir`` (an event file, as TensorBoard reads them).

    Args:
        log_dir: folder of the event files (created).
        purge_step: on a resumed run, the step it continues from: events a crashed session logged after it
            are dropped, so the curves show each step once.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def config(self, config: dict[str, Any]) -> None:
        """Store the run's configuration as text (tag ``config``, a JSON block)."""
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)

    def row(self, row: dict[str, Any]) -> None:
        """Add every numeric column of one metrics row as a scalar at ``row["step"]``."""
        step = int(row["step"])
        for key, value in row.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
