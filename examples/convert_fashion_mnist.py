"""A model you wrote yourself (conv + BatchNorm + residual block + pooling + linear) learns Fashion-MNIST
by local plasticity: ``heterograd.convert`` and the plain PyTorch loop, one rule after another.

    python examples/convert_fashion_mnist.py                       # 20k images, 1 epoch, 1 thread
    python examples/convert_fashion_mnist.py --n-train 60000 --epochs 5

Prints, per rule: test accuracy, last training loss, seconds, and the probe of the trained model on a test
batch (phi of every plastic layer, DC score over channels). ``autograd`` is the unconverted model trained
by backprop; ``bp`` must match it (the float64 check at the start shows the difference after 5 steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import heterograd
from heterograd.data import load_dataset


class Net(nn.Module):
    """28×28 grey image -> 10 logits: conv-BN-ReLU, max pool, a residual block, strided conv, average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn0(self.stem(x))), 2)  # 16 x 14 x 14
        x = F.relu(x + self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))  # residual block
        x = F.relu(self.bn3(self.down(x)))  # 32 x 7 x 7
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(rule: str, seed: int, example: torch.Tensor, weight_decay: float) -> nn.Module:
    torch.manual_seed(seed)
    model = Net()
    if rule == "autograd":
        return model
    opts: dict = {"seed": seed, "weight_decay": weight_decay}  # hsp: its default feedback gain c = 0.5
    if rule == "dfa":
        opts["example_input"] = example
    return heterograd.convert(model, rule, **opts)


def bp_matches_autograd(x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> float:
    """Max |difference| of all weights after ``steps`` float64 SGD steps: autograd vs converted ``bp``."""
    models = []
    for rule in ("autograd", "bp"):
        torch.manual_seed(0)
        m = Net().double()
        if rule == "bp":
            heterograd.convert(m, "bp", weight_decay=1e-4)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4 if rule == "autograd" else 0)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(m(x.double()), y).backward()
            opt.step()
        models.append(m.state_dict())
    return max(float((models[0][k].double() - models[1][k].double()).abs().max()) for k in models[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="autograd,bp,kp,hsp,fa,dfa,usf,frsf")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_dataset("fashion-mnist", n_train=args.n_train, n_test=args.n_test)
    xtr, ytr = ds.x_train.view(-1, 1, 28, 28), ds.y_train
    xte, yte = ds.x_test.view(-1, 1, 28, 28), ds.y_test
    print(f"bp vs autograd, float64, 5 SGD steps: max |ΔW| = {bp_matches_autograd(xtr[:64], ytr[:64]):.2e}")

    results = []
    for rule in args.rules.split(","):
        model = build(rule, args.seed, xtr[:8], args.weight_decay)
        opt = torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=0.9,
            weight_decay=args.weight_decay if rule == "autograd" else 0.0,  # the rules carry their own decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * (len(xtr) // args.batch))
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        model.train()
        for _ in range(args.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - args.batch + 1, args.batch):
                idx = perm[i : i + args.batch]
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            hits = [(model(xte[i : i + 1000]).argmax(1) == yte[i : i + 1000]).sum() for i in range(0, len(xte), 1000)]
        acc = float(sum(hits)) / len(xte)
        row = {"rule": rule, "test_acc": acc, "train_loss": loss.item(), "seconds": seconds}
        if rule != "autograd":
            model.train()
            report = heterograd.probe(model, xte[:256], yte[:256], F.cross_entropy)
            row["phi"] = {k: v["phi"] for k, v in report.layers.items()}
            row["dc_score"] = report.dc_score
        results.append(row)
        phis = " ".join(f"{v:+.2f}" for v in row.get("phi", {}).values())
        print(
            f"{rule:8s} test acc {acc:.4f}  loss {loss.item():.3f}  {seconds:6.1f}s  "
            f"phi [{phis}]  DC {row.get('dc_score', float('nan')):.3f}",
            flush=True,
        )
    layers = list(next((r["phi"] for r in results if "phi" in r), {}).keys())
    print(f"\nphi per plastic layer, in order: {', '.join(layers)} (fc is the output layer, phi = 1 by construction)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
