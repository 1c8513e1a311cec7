"""The cost table of ``docs/scaling.md``, rendered from a committed converted-model benchmark JSON.

``python -m heterograd.bench.scaling docs/benchmarks/bench-convnets.json`` prints the table;
``--write docs/scaling.md`` replaces the part between the ``scaling-table`` markers, so the page holds no number
that the JSON (or the arithmetic on the runs' published sizes below) does not give.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HeterogradError

START, END = "<!-- scaling-table:start -->", "<!-- scaling-table:end -->"


@dataclass(frozen=True)
class Run:
    """A published training run: data size, batch, epochs, and the benchmarked model standing in for it."""

    name: str
    model: str
    n_train: int
    batch: int
    epochs: int
    proxy: str

    @property
    def steps(self) -> int:
        """Optimiser steps of the run (full batches only, as ``heterograd train`` takes them)."""
        return self.epochs * (self.n_train // self.batch)


RUNS: tuple[Run, ...] = (
    Run("CIFAR-10, 250 epochs", "resnet56", 50_000, 128, 250, "resnet20"),
    Run("ImageNet, 90 epochs", "ResNet-18", 1_281_167, 256, 90, "resnet20"),
)


def _feedback_volume(model: str, rule: str) -> float | None:
    """Values all-reduced per step under ``rule`` over backprop's (``B`` is as large as ``W``); zoo models only."""
    from ..models import MODELS, make_model
    from ..nn import convert

    if model not in MODELS:
        return None
    plain = make_model(model, (3, 32, 32), 10, seed=0)
    n_bp = sum(p.numel() for p in plain.parameters())
    converted = convert(make_model(model, (3, 32, 32), 10, seed=0), rule)
    return sum(p.numel() for p in converted.parameters() if p.requires_grad) / n_bp


def scaling_table(bench_json: str | Path) -> str:
    """Markdown table: per run and rule, step time and memory × backprop (measured on the proxy) and DDP volume."""
    path = Path(bench_json)
    try:
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeterogradError(f"cannot read the benchmark {path} ({exc}); pass a bench --models JSON") from None
    env = result.get("environment", {})
    rows = {
        (r["model"], r["impl"]): r for r in result.get("results", []) if not r.get("autocast") and not r["compiled"]
    }
    where = env.get("gpu") or f"{env.get('cpu', '?')}, {env.get('torch_threads', '?')} thread(s)"
    cfg = result.get("config", {})
    shape = "x".join(map(str, cfg.get("input_shape", [])))
    lines = [
        f"Measured on {env.get('device', '?')} ({where}), {shape} inputs at batch {cfg.get('batch')}: `{path}`.",
        "",
        "| run | model | steps | rule | step time × BP | step memory × BP | values all-reduced × BP (DDP) |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for run in RUNS:
        for rule in ("kp", "hsp"):
            r = rows.get((run.proxy, rule))
            if r is None:
                raise HeterogradError(f"{path} has no {rule} row for {run.proxy}; run bench --models {run.proxy}")
            mem = r.get("memory_ratio_to_bp")
            vol = _feedback_volume(run.model, rule)
            lines.append(
                f"| {run.name} | {run.model} | {run.steps:,} | {rule} | {r['ratio_to_bp']:.2f} (on {run.proxy}) | "
                f"{'-' if mem is None else f'{mem:.2f}'} (on {run.proxy}) | "
                f"{'≈ 2 (B is as large as W)' if vol is None else f'{vol:.2f}'} |"
            )
    worst = max(rows[(run.proxy, rule)]["ratio_to_bp"] for run in RUNS for rule in ("kp", "hsp"))
    lines += [
        "",
        f"A kp or hsp run costs at most {worst:.2f}x the compute time of the same backprop run (the slowest ratio "
        f"above, {(worst - 1) * 100:.0f} % more) if the ratio measured here holds on the target device. Step memory "
        "excludes the parameters and optimiser state, which B doubles (B and its momentum are as large as W's).",
    ]
    return "\n".join(lines)


def write_into(doc: str | Path, table: str) -> None:
    """Replace the text between `START` and `END` in ``doc`` with ``table``."""
    p = Path(doc)
    text = p.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise HeterogradError(f"{p} has no {START} ... {END} markers; add them where the table goes")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    p.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """``python -m heterograd.bench.scaling BENCH.json [--write DOC.md]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m heterograd.bench.scaling BENCH.json [--write DOC.md]", file=sys.stderr)
        raise SystemExit(2)
    try:
        table = scaling_table(args[0])
        if len(args) == 3 and args[1] == "--write":
            write_into(args[2], table)
    except HeterogradError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table)


if __name__ == "__main__":
    main()
