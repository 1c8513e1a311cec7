"""Figures of a run: loss and probes over training (PNG, matplotlib Agg, no screen needed).

A run's own figures are drawn on bare ``matplotlib.figure.Figure`` objects with fixed margins: no pyplot
import and no second layout pass (``bbox_inches="tight"``), which were most of the time a one-epoch
``heterograd train`` spent outside training.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter


def series(rows: Sequence[Mapping[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """The finite values of column ``key`` against column ``x`` (blank / NaN cells skipped)."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is None or v == "":
            continue
        v = float(v)
        if math.isfinite(v):
            xs.append(float(r[x]))
            ys.append(v)
    return xs, ys


class _PlainLog(LogFormatter):
    """Log-axis labels written plainly ("0.4", "2"), where `LogFormatter` writes "4e-01" below 1."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:.4g}"


def _save(fig: Any, path: Path, tight: bool = True) -> None:
    """Write ``fig`` to ``path`` atomically (PNG, 110 dpi); ``tight`` crops to the drawn content (a second pass)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None)
    if "matplotlib.pyplot" in sys.modules:  # a pyplot figure (the experiments' figures) is released
        sys.modules["matplotlib.pyplot"].close(fig)
    tmp.replace(path)


def plot_run(rows: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "") -> list[Path]:
    """Write ``loss.png`` and ``probes.png`` from metrics rows; returns the paths written."""
    if not rows:
        return []
    paths = []
    fig = Figure(figsize=(6.4, 4.0))
    fig.subplots_adjust(left=0.15, right=0.87, bottom=0.12, top=0.92)
    ax = fig.subplots()
    x, y = series(rows, "train_loss")
    ax.plot(x, y, label="train loss", color="C0")
    x, y = series(rows, "test_loss")
    if x:
        ax.plot(x, y, "o-", label="test loss", color="C1", ms=3)
    xv, yv = series(rows, "val_loss")  # language models: validation at the end of each epoch
    if xv:
        ax.plot(xv, yv, "o-", label="validation loss", color="C3", ms=3)
        y = [*y, *yv]
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if y and min(y) > 0:
        ax.set_yscale("log")
        # plain tick labels ("0.6", "2"): the default 10^x labels go through mathtext, slower than the figure
        ax.yaxis.set_major_formatter(_PlainLog())
        ax.yaxis.set_minor_formatter(_PlainLog(minor_thresholds=(2, 0.5)))
    x, acc = series(rows, "test_accuracy")
    handles, labels = ax.get_legend_handles_labels()
    top = ax
    if x:
        top = ax.twinx()
        top.plot(x, acc, "s--", color="C2", ms=3, label="test accuracy")
        top.set_ylabel("test accuracy")
        top.set_ylim(0, 1)
        h2, l2 = top.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    top.legend(handles, labels, loc="center right", fontsize=8)  # one legend (on the top axes) for all curves
    # y given: the title sits at the top edge (nothing is drawn above the axes) instead of matplotlib measuring
    # every tick label's extent to place it, which took half of the figure's drawing time
    ax.set_title(title or "loss", y=1.0, pad=6)
    paths.append(out_dir / "loss.png")
    _save(fig, paths[-1], tight=False)

    # circuit rows: phi_1, phi_2, ...; converted models: phi/<module path> (heterograd.nn.probe)
    numbered = sorted({int(k.split("_")[1]) for r in rows for k in r if k.startswith("phi_")})
    named = list(dict.fromkeys(k[4:] for r in rows for k in r if k.startswith("phi/")))
    layers = [(f"_{l}", str(l)) for l in numbered] + [(f"/{n}", n) for n in named]
    if layers:
        fig = Figure(figsize=(13, 3.8))
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.84 if title else 0.9, wspace=0.18)
        axes = fig.subplots(1, 3)
        for sfx, name in layers:
            axes[0].plot(*series(rows, f"phi{sfx}"), label=f"layer {name}")
            axes[1].plot(*series(rows, f"align{sfx}"), label=f"layer {name}")
        axes[0].axhline(0, color="k", lw=0.6)
        axes[0].set_title("consistency score φ", y=1.0, pad=6)
        axes[1].axhline(0, color="k", lw=0.6)
        axes[1].set_title("align = cos(u, ∇ₚℓ)", y=1.0, pad=6)
        axes[1].set_ylim(-1.05, 1.05)
        axes[2].plot(*series(rows, "dc_score"), color="k", label="DC score")
        for sfx, name in layers:
            xa, ya = series(rows, f"angle{sfx}")
            if xa:
                axes[2].plot(xa, [v / 180 for v in ya], "--", label=f"∠(B,Wᵀ)/180°, layer {name}")
        axes[2].set_ylim(-0.05, 1.05)
        axes[2].set_title("DC score and feedback angle", y=1.0, pad=6)
        for a in axes:
            a.set_xlabel("step")
            a.legend(fontsize=7)
        if title:
            fig.suptitle(title)
        paths.append(out_dir / "probes.png")
        _save(fig, paths[-1], tight=False)
    return paths
