"""Benchmark: a population of circuits trained as one batched computation vs a Python loop over circuits.

Same work on both sides: ``P`` circuits (teacher task, 20-32-5 tanh, minibatch 32), each with its own
init and its own ``poly`` rule genome (bilinear plus N(0, 0.1²) noise, so none diverges), trained for
``T`` steps on the same minibatches. Compared:

* ``batched``: `heterograd.evolve.train_population` (population = leading tensor dim), with the
  default block of 64 circuits and with the whole population in one block;
* ``loop (library)``: for each circuit, ``Circuit`` + ``Poly`` rule + ``local_step`` + ``apply_steps``
  (what one would write without the evolve module);
* ``loop (kernel, P=1)``: the batched kernel called once per circuit.

Run ``python -m heterograd.bench.evolve --out DIR``; writes ``DIR/bench_evolve.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..circuits import Circuit
from ..data import load_dataset
from ..evolve import GenomeSpec, Problem, circuit_seed, init_population, train_population
from ..evolve.population import batch_indices
from ..losses import get_loss
from ..results import atomic_write_text, write_json
from ..rules import Poly
from ..train import apply_steps, local_step


def _setup(population: int, steps: int, block: int) -> tuple[Problem, torch.Tensor, torch.Tensor, list[int]]:
    ds = load_dataset("teacher", seed=0)
    pr = Problem(ds.x_train, ds.y_train, (20, 32, 5), steps=steps, batch_size=32, lr=0.05, block=block)
    spec = GenomeSpec()
    g = torch.Generator().manual_seed(0)
    genomes = spec.bilinear(1e-4) + 0.1 * torch.randn(population, spec.size, generator=g, dtype=torch.float64)
    tw, tb = spec.expand(genomes)
    seeds = [circuit_seed(0, 0, i) for i in range(population)]
    return pr, tw, tb, seeds


def time_batched(pr: Problem, tw: torch.Tensor, tb: torch.Tensor, seeds: list[int]) -> tuple[float, torch.Tensor]:
    idx = batch_indices(pr, 0)
    t0 = time.perf_counter()
    losses = []
    with torch.no_grad():
        for a in range(0, len(seeds), pr.block):
            sl = slice(a, a + pr.block)
            _, loss, _ = train_population(pr, init_population(pr, seeds[sl]), tw[sl], tb[sl], idx)
            losses.append(loss)
    return time.perf_counter() - t0, torch.cat(losses, 1)


def time_loop_library(pr: Problem, tw: torch.Tensor, tb: torch.Tensor, seeds: list[int]) -> tuple[float, torch.Tensor]:
    idx = batch_indices(pr, 0)
    loss = get_loss("mse")
    out = torch.empty(pr.steps, len(seeds), dtype=torch.float64)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, s in enumerate(seeds):
            c = Circuit(pr.sizes, seed=s)
            rule = Poly(theta_w=tw[i], theta_b=tb[i])
            for t in range(pr.steps):
                step = local_step(c, rule, None, loss, pr.x[idx[t]], pr.y[idx[t]])
                out[t, i] = step.loss
                apply_steps(c, [None if d is None else pr.lr * d for d in step.deltas.flat()])
    return time.perf_counter() - t0, out


def time_loop_kernel(pr: Problem, tw: torch.Tensor, tb: torch.Tensor, seeds: list[int]) -> float:
    idx = batch_indices(pr, 0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, s in enumerate(seeds):
            train_population(pr, init_population(pr, [s]), tw[i : i + 1], tb[i : i + 1], idx)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default), as in evolve")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    P, T = args.population, args.steps
    pr, tw, tb, seeds = _setup(P, T, 64)
    t_batched, l_batched = time_batched(pr, tw, tb, seeds)
    pr_all = Problem(**{**pr.__dict__, "block": P})
    t_one, _ = time_batched(pr_all, tw, tb, seeds)
    t_lib, l_lib = time_loop_library(pr, tw, tb, seeds)
    t_kernel = time_loop_kernel(pr, tw, tb, seeds)
    same = bool(torch.allclose(l_batched, l_lib, rtol=1e-3, atol=1e-5))
    result: dict[str, object] = {
        "population": P,
        "steps": T,
        "circuit": "20-32-5 tanh, batch 32, teacher task",
        "torch_threads": torch.get_num_threads(),
        "seconds": {
            "batched (block 64)": round(t_batched, 3),
            f"batched (one block of {P})": round(t_one, 3),
            "loop (library: Circuit + Poly + local_step)": round(t_lib, 3),
            "loop (batched kernel, P=1)": round(t_kernel, 3),
        },
        "speedup_vs_library_loop": round(t_lib / t_batched, 2),
        "speedup_vs_kernel_loop": round(t_kernel / t_batched, 2),
        "speedup_vs_library_loop_one_block": round(t_lib / t_one, 2),
        "losses_agree": same,
        "circuit_steps_per_second_batched": round(P * T / t_batched),
        "target": "batched >= 20x faster than the library loop at P = 256",
        "meets_target": t_lib / t_batched >= 20,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench_evolve.json", result)
    rows = "\n".join(f"| {k} | {v} |" for k, v in result["seconds"].items())  # type: ignore[union-attr]
    md = (
        f"# Evolution back end: batched population vs Python loop\n\nP = {P} circuits x {T} steps, "
        f"{result['circuit']}, torch threads {result['torch_threads']}.\n\n| method | seconds |\n|---|---|\n{rows}\n\n"
        f"Speed-up of the batched back end over the library loop: **{result['speedup_vs_library_loop']}x** "
        f"(one block: {result['speedup_vs_library_loop_one_block']}x); over a loop of the kernel at P=1: "
        f"{result['speedup_vs_kernel_loop']}x. Losses of both agree: {same}. Target (>= 20x): "
        f"{'met' if result['meets_target'] else 'NOT met'}.\n"
    )
    atomic_write_text(args.out / "bench_evolve.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
