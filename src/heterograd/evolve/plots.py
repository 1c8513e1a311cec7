"""Figure of an evolution run: fitness against the bilinear reference, and the emergence of DC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..plots import series


def _col(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    return series(rows, key, x="generation")


def plot_evolution(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path | None:
    """Write ``path`` (PNG): best / median fitness and the reference loss; DC and descent fractions."""
    if not rows:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot(*_col(rows, "best_fitness"), "o-", ms=3, label="best")
    a.plot(*_col(rows, "median_fitness"), "s-", ms=3, label="median")
    a.plot(*_col(rows, "reference_loss"), "k--", label="bilinear reference")
    ys = [y for k in ("best_fitness", "median_fitness", "reference_loss") for y in _col(rows, k)[1]]
    if ys and min(ys) > 0:
        a.set_yscale("log")
    a.set_xlabel("generation")
    a.set_ylabel("fitness (final loss)")
    a.legend(fontsize=8)
    a.set_title("fitness")
    b.plot(*_col(rows, "dc_fraction"), "o-", ms=3, label="DC fraction")
    b.plot(*_col(rows, "top_descent_fraction"), "s-", ms=3, label="top-layer descent fraction")
    b.plot(*_col(rows, "reference_dc_fraction"), "k--", label="DC fraction, bilinear")
    b.set_ylim(-0.05, 1.05)
    b.set_xlabel("generation")
    b.legend(fontsize=8)
    b.set_title("emergence of gradient learning")
    if title:
        fig.suptitle(title)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
