"""ResNet-20 trained by ``kp`` on Fashion-MNIST with each ``norm_feedback`` mode: exact BatchNorm feedback
(through the batch statistics, backprop's derivative) against local feedback (``γ/σ`` per channel).

    python examples/resnet20_norm_feedback.py            # 10,000 images, 2 epochs, seed 0, both modes
    python examples/resnet20_norm_feedback.py --n-train 60000 --epochs 10

The recipe is ``heterograd repro convnets``'s (SGD momentum 0.9, lr 0.02 with a cosine schedule, batch 128,
weight decay 1e-4 on W, b, B and the norm parameters), run through :class:`heterograd.train_module.ModuleTrainer`
with only ``norm_feedback`` changed. Writes ``docs/convert/resnet20_norm_feedback.json`` (``--out``), from which
``heterograd repro docs`` renders the table in ``docs/convert.md``. A short run, reported, not judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from heterograd.experiments.convnets import FULL, config_of
from heterograd.train_module import ModuleTrainer


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one ResNet-20 under ``kp`` with ``norm_feedback=mode``; its numbers."""
    torch.set_num_threads(args.threads)
    scale = dataclasses.replace(FULL, resnet_epochs=args.epochs, resnet_train=args.n_train, resnet_test=args.n_test)
    cfg = dataclasses.replace(config_of("resnet20", "kp", args.seed, scale), norm_feedback=mode)
    tr = ModuleTrainer(cfg)
    tr.log_every = max(1, tr.steps_per_epoch // 2)
    res = tr.fit(None, progress=False, handle_signals=False)
    s = res.summary
    acc = s.get("test_accuracy")
    finite = [a for a in s["align"] if isinstance(a, float) and math.isfinite(a)]
    return {
        "norm_feedback": mode,
        "test_error_pct": None if s["diverged"] or acc is None else round(100.0 * (1.0 - float(acc)), 2),
        "diverged": bool(s["diverged"]),
        "final_train_loss": s["final_train_loss"],
        "steps": s["steps"],
        "mean_align": sum(finite) / len(finite) if finite else None,
        "align": dict(zip(s["layers"], s["align"], strict=True)),
        "seconds": round(float(s["wall_seconds"]), 1),
    }


def _commit() -> str | None:
    """The git commit of the working tree the run used (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=None, help="default: all 10,000 test images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="processes (one per mode); 1 runs the modes in turn")
    p.add_argument("--out", type=Path, default=Path("docs/convert/resnet20_norm_feedback.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = ("exact", "local")
    if args.workers > 1:  # one process per mode, each with --threads threads
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_mode, modes, [args] * len(modes)))
    else:
        results = [run_mode(mode, args) for mode in modes]
    for r in results:
        print(json.dumps(r), flush=True)
    doc = {
        "command": "python examples/resnet20_norm_feedback.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": "resnet20",
        "rule": "kp",
        "data": "fashion-mnist",
        "n_train": args.n_train,
        "n_test": args.n_test or 10000,
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "workers": args.workers,
        "torch": torch.__version__,
        "commit": _commit(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
