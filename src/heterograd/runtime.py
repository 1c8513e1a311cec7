"""Runtime helpers every layer may use: dtypes by name, device resolution, the environment record."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from ._version import __version__
from .errors import HeterogradError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def key_values(text: str | None, flag: str, example: str) -> list[tuple[str, str]]:
    """Split ``"a=1,b-c=x"`` into ``[("a", "1"), ("b_c", "x")]`` (names stripped, ``-`` read as ``_``).

    The one parser of the ``--*-options k=v,...`` flags; each caller converts the values its own way.
    ``None`` or blank text gives ``[]``; an entry without ``=`` or without a name is one clear error naming
    ``flag`` and showing ``example``.
    """
    pairs: list[tuple[str, str]] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        if not eq:
            raise HeterogradError(f"{flag} entry {part!r} is not key=value; write e.g. {example}")
        if not k.strip():
            raise HeterogradError(f"{flag} entry {part!r} has no name; write e.g. {example}")
        pairs.append((k.strip().replace("-", "_"), v.strip()))
    return pairs


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda if available); clear error if unavailable."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HeterogradError(f"--device {name} requested but CUDA is not available here; use --device cpu")
        return name
    raise HeterogradError(f"unknown device {name!r}; valid choices: cpu, cuda, cuda:N, auto")


def environment() -> dict[str, Any]:
    """Versions and platform recorded with every run."""
    return {
        "heterograd": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }
