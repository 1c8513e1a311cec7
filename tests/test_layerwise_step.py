"""The layer-wise SGD step (each delta applied as soon as it exists) equals local_step + sgd motif + apply_steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from heterograd.circuits import Circuit, block_mask
from heterograd.losses import get_loss
from heterograd.optim import make_motif
from heterograd.rules import HSP, make_rule
from heterograd.train import apply_steps, layerwise_sgd_step, local_step


def _both(
    rule_name: str,
    topology: str,
    lam: float,
    n: int,
    dtype: torch.dtype = torch.float32,
    forward_masks: dict[int, torch.Tensor] | None = None,
    **kw: Any,
):
    circuits = [
        Circuit(
            [13, 11, 9, 5],
            "tanh",
            topology=topology,
            density=0.4 if topology == "sparse" else 1.0,
            seed=2,
            dtype=dtype,
            forward_masks=forward_masks,
        )
        for _ in range(2)
    ]
    rule = make_rule(rule_name, weight_decay=lam, **kw)
    motif, loss = make_motif("sgd", lr=0.07), get_loss("ce")
    states = [motif.init(c.plastic_tensors()) for c in circuits]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(n, 13, generator=g, dtype=dtype)
        y = torch.randint(0, 5, (n,), generator=g)
        out = local_step(circuits[0], rule, None, loss, x, y)
        steps, states[0] = motif.update(out.deltas.flat(), states[0], circuits[0].plastic_tensors())
        apply_steps(circuits[0], steps)
        done = layerwise_sgd_step(circuits[1], rule, None, motif, states[1], loss, x, y)
        assert done is not None
        assert torch.equal(done[0], out.loss)
        states[1] = done[1]
    return circuits, states


@pytest.mark.parametrize(
    ("rule", "topology", "lam", "n", "kw"),
    [
        ("hsp", "layered", 1e-3, 8, {}),
        ("hsp", "layered", 0.0, 7, {"feedback_gain": 0.5}),  # batch not a power of two, gain != 1, no decay
        ("kp", "sparse", 1e-4, 6, {}),  # masked B
        ("hsp", "direct", 1e-3, 8, {}),  # non-adjacent feedback edges
    ],
)
def test_layerwise_step_is_bit_identical(rule, topology, lam, n, kw):
    (a, b), (sa, sb) = _both(rule, topology, lam, n, **kw)
    for ta, tb in zip(a.plastic_tensors(), b.plastic_tensors(), strict=True):
        assert torch.equal(ta, tb)
    assert sa == sb


def test_layerwise_step_declines_what_it_cannot_do():
    c = Circuit([4, 3, 2], seed=0)
    x, y, loss = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), get_loss("ce")
    momentum = make_motif("momentum", lr=0.1)
    assert (
        layerwise_sgd_step(c, make_rule("hsp"), None, momentum, momentum.init(c.plastic_tensors()), loss, x, y) is None
    )
    sgd = make_motif("sgd", lr=0.1)
    for name in ("fa", "bp", "poly"):  # no layer_deltas / own teaching signal
        assert layerwise_sgd_step(c, make_rule(name), None, sgd, sgd.init(c.plastic_tensors()), loss, x, y) is None

    @dataclass(frozen=True)
    class MyHSP(HSP):  # a subclass that changes deltas must not inherit the layer-wise path
        name: ClassVar[str] = "my-hsp-test"

        def deltas(self, signals, params, state):
            return super().deltas(signals, params, state)

    before = [t.clone() for t in c.plastic_tensors()]
    assert layerwise_sgd_step(c, MyHSP(), None, sgd, sgd.init(c.plastic_tensors()), loss, x, y) is None
    assert all(torch.equal(t, u) for t, u in zip(before, c.plastic_tensors(), strict=True))


def test_layerwise_step_keeps_fixed_forward_wiring():
    """A block-masked first layer (two populations, each fed by its own input bundle) stays block-masked."""
    mask = block_mask([6, 7], [5, 6])
    (a, b), _ = _both("hsp", "layered", 1e-3, 8, forward_masks={1: mask})
    for c in (a, b):
        assert torch.all(c.W[0][mask == 0] == 0)
    for ta, tb in zip(a.plastic_tensors(), b.plastic_tensors(), strict=True):
        assert torch.equal(ta, tb)
