"""The layer-wise SGD step (each delta applied as soon as it exists, pending ones without being formed) equals
local_step + sgd motif + apply_steps: to rounding in float32 and float64 (the fused additions round differently),
and its pieces, formed, equal `deltas` bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from heterograd.circuits import Circuit, block_mask
from heterograd.losses import get_loss
from heterograd.optim import make_motif
from heterograd.rules import HSP, Params, PendingDelta, Signals, make_rule
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
        torch.testing.assert_close(done[0], out.loss, **_tol(dtype))
        states[1] = done[1]
    return circuits, states


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}


CASES = [
    ("hsp", "layered", 1e-3, 8, {}),
    ("hsp", "layered", 0.0, 7, {"feedback_gain": 0.5}),  # batch not a power of two, gain != 1, no decay
    ("hsp", "layered", 1e-3, 8, {"feedback_gain": 1.25}),  # a gain that is not a power of two
    ("kp", "layered", 1e-9, 8, {}),  # a decay below LERP_MIN_DECAY: W's delta formed, then added
    ("kp", "sparse", 1e-4, 6, {}),  # masked B
    ("hsp", "direct", 1e-3, 8, {}),  # non-adjacent feedback edges
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("rule", "topology", "lam", "n", "kw"), CASES)
def test_layerwise_step_equals_the_three_calls(rule, topology, lam, n, kw, dtype):
    (a, b), (sa, sb) = _both(rule, topology, lam, n, dtype=dtype, **kw)
    for ta, tb in zip(a.plastic_tensors(), b.plastic_tensors(), strict=True):
        torch.testing.assert_close(ta, tb, **_tol(dtype))
    assert sa == sb


@pytest.mark.parametrize(("rule", "topology", "lam", "n", "kw"), CASES)
def test_layer_pieces_formed_equal_deltas_bit_for_bit(rule, topology, lam, n, kw):
    """Each piece, pending ones formed in the order given, is exactly the delta `deltas` returns."""
    c = Circuit([13, 11, 9, 5], "tanh", topology=topology, density=0.4 if topology == "sparse" else 1.0, seed=2)
    r, loss = make_rule(rule, weight_decay=lam, **kw), get_loss("ce")
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 13, generator=g), torch.randint(0, 5, (n,), generator=g)
    trace = c.run_forward(x)
    u = c.run_feedback(trace, c.output_error(trace, loss.error(trace.output, y)))
    t, L = c.plastic_tensors(), c.depth
    params = Params(tuple(t[:L]), tuple(t[L : 2 * L]), tuple(t[2 * L :]))
    want, _ = r.deltas(Signals.collect(c, trace, u), params, None)
    pending = 0
    for kind, k, d in r.layer_deltas(Signals.collect(c, trace, u), params, None):
        if isinstance(d, PendingDelta):
            pending += 1
            d = d.materialize()
        ref = {"W": want.W, "b": want.b, "B": want.B}[kind][k]
        assert (d is None) == (ref is None)
        if d is not None:
            assert torch.equal(d, ref), (kind, k)
    assert pending >= 1  # the input layer's ΔW is never formed in the SGD step


def test_the_sgd_step_forms_no_input_layer_correlation_nor_c_times_H():
    """784-wide input layer and an adjacent 1024x1024-like B: the step adds both without forming them."""
    c = Circuit([20, 16, 12, 3], "tanh", seed=0)
    r = make_rule("hsp", feedback_gain=1.25)
    x, y, loss = torch.randn(4, 20), torch.tensor([0, 1, 2, 0]), get_loss("ce")
    trace = c.run_forward(x)
    u = c.run_feedback(trace, c.output_error(trace, loss.error(trace.output, y)))
    t, L = c.plastic_tensors(), c.depth
    params = Params(tuple(t[:L]), tuple(t[L : 2 * L]), tuple(t[2 * L :]))
    kinds = {(kind, k): type(d).__name__ for kind, k, d in r.layer_deltas(Signals.collect(c, trace, u), params, None)}
    assert kinds[("W", 0)] == "PendingForwardDelta"
    assert kinds[("B", 0)] == kinds[("B", 1)] == "PendingFeedbackDelta"
    assert kinds[("W", 1)] == kinds[("W", 2)] == "Tensor"  # formed once: W's delta and B's view share it
    decayed = make_rule("hsp", feedback_gain=1.25, weight_decay=1e-4)  # -C/λ formed once, W by one lerp_
    kinds = {
        (kind, k): type(d).__name__ for kind, k, d in decayed.layer_deltas(Signals.collect(c, trace, u), params, None)
    }
    assert kinds[("W", 0)] == "PendingForwardDelta"
    assert kinds[("W", 1)] == kinds[("W", 2)] == "PendingDecayedForwardDelta"
    assert kinds[("B", 0)] == kinds[("B", 1)] == "PendingFeedbackDelta"
    assert {kinds[("b", k)] for k in range(3)} == {"PendingBiasDelta"}


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_loss_and_error_equal_the_two_calls(loss_name):
    """The SGD step takes the batch loss and the output error from one call (cross-entropy: one log-softmax)."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(9, 5, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 5, (9,), generator=g)
    loss = get_loss(loss_name)
    batch_loss, e = loss.loss_and_error(out, y)
    torch.testing.assert_close(batch_loss, loss(out, y), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(e, loss.error(out, y), rtol=1e-13, atol=1e-14)


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
        torch.testing.assert_close(ta, tb, **_tol(torch.float32))
