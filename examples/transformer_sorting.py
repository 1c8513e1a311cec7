"""A minGPT-style transformer learns to sort digits by heterosynaptic plasticity (``hsp`` through ``convert``).

    python examples/transformer_sorting.py   # autograd, kp, hsp (c = 0.5), fa: 300 Adam steps each, 1 thread

The rules run with heterograd's defaults (``convert(model, rule)``: ``λ = 1e-4``; ``hsp``'s gain ``c = 0.5``).

Prints the token accuracy on the sorted half of 512 held-out sequences and the fraction of sequences sorted
entirely right, for plain autograd and for the converted model.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import heterograd
from heterograd.data import sorting_task
from heterograd.data.sequences import IGNORE
from heterograd.models import GPT, GPTConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="autograd,kp,hsp,fa", help="hsp runs with its default feedback gain c = 0.5")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--length", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    L, V = args.length, args.vocab
    x, y = sorting_task(4096, L, V, seed=0)
    xt, yt = sorting_task(512, L, V, seed=1)
    for rule in args.rules.split(","):
        model = GPT(GPTConfig(vocab=V, block=2 * L, layers=2, heads=2, dim=32), seed=0)
        if rule != "autograd":
            heterograd.convert(model, rule, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, x.shape[0], (64,), generator=g)
            loss = F.cross_entropy(model(x[idx]).flatten(0, 1), y[idx].flatten(), ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model(xt).argmax(-1)
        mask = yt != IGNORE
        tok = float((pred[mask] == yt[mask]).float().mean())
        seq = float(((pred == yt) | ~mask).all(1).float().mean())
        print(
            f"{rule:8s} token acc {tok:.3f}  sequences sorted {seq:.3f}  {time.perf_counter() - t0:5.1f}s", flush=True
        )


if __name__ == "__main__":
    main()
