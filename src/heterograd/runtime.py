"""Runtime helpers every layer may use: dtypes by name, device resolution, the environment record."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from ._version import __version__
from .errors import HeterogradError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


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
