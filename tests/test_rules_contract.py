"""Every registered rule goes through the same checks (optax-style contract tests)."""

from __future__ import annotations

import pytest
import torch

from heterograd import Circuit, HeterogradError, get_loss
from heterograd.rules import RULES, Deltas, Params, Rule, Signals, make_rule, rule_hyperparameters


def applies_to_circuit(rule: Rule, topology: str) -> bool:
    """Rules for converted models only (sign symmetry) and dfa off the ``direct`` wiring refuse a Circuit."""
    return rule.circuit_engine and (rule.feedback != "direct" or topology == "direct")


def _setup(topology: str, dtype: torch.dtype):
    density = 0.5 if topology in ("sparse", "amorphous") else 1.0
    c = Circuit([7, 6, 5, 3], topology=topology, density=density, seed=0, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 7, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (9,), generator=g)
    loss = get_loss("ce")
    trace = c.run_forward(x)
    return c, x, y, loss, trace


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("topology", ["layered", "sparse", "direct", "amorphous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rule_contract(name, topology, dtype):
    c, x, y, loss, trace = _setup(topology, dtype)
    gain = 1.0 if name == "kp" else 0.7  # kp is hsp with c = 1
    hyper = {k: v for k, v in {"weight_decay": 1e-3, "feedback_gain": gain}.items() if k in rule_hyperparameters(name)}
    rule = make_rule(name, **hyper)
    if not applies_to_circuit(rule, topology):  # the rule says so, clearly, before any step
        with pytest.raises(HeterogradError, match=name):
            rule.init(c)
        return
    state = rule.init(c)
    u = rule.teaching(c, trace, x, y, loss)
    if u is None:
        u = c.run_feedback(trace, c.output_error(trace, loss.error(trace.output, y)))
    signals = Signals.collect(c, trace, u)
    params = Params.of(c)
    before = [t.clone() for t in c.plastic_tensors()]
    sig_before = [(s.h_pre.clone(), s.u.clone()) for s in signals.forward]
    deltas, _ = rule.deltas(signals, params, state)
    assert isinstance(deltas, Deltas)
    assert len(deltas.W) == c.depth and len(deltas.b) == c.depth and len(deltas.B) == len(c.edges)
    for d, t in zip(deltas.flat(), c.plastic_tensors(), strict=True):
        if d is not None:
            assert d.shape == t.shape and d.dtype == t.dtype and d.device == t.device
            assert torch.isfinite(d).all()
            assert d.data_ptr() != t.data_ptr()  # a new tensor, not a view of the weights
    for a, b in zip(before, c.plastic_tensors(), strict=True):
        assert torch.equal(a, b), "rule mutated the circuit"
    for (h, uu), s in zip(sig_before, signals.forward, strict=True):
        assert torch.equal(h, s.h_pre) and torch.equal(uu, s.u), "rule mutated its signals"
    assert isinstance(rule.describe(), str)


def test_unknown_rule_lists_choices():
    with pytest.raises(ValueError, match=r"unknown rule 'nope'; valid choices: bp, brsf, dfa, fa, .*hsp, kp, poly"):
        make_rule("nope")


def test_poly_with_bilinear_theta_equals_hsp():
    c, _x, y, loss, trace = _setup("layered", torch.float64)
    u = c.run_feedback(trace, c.output_error(trace, loss.error(trace.output, y)))
    s = Signals.collect(c, trace, u)
    a, _ = make_rule("hsp", weight_decay=0.01, feedback_gain=0.3).deltas(s, Params.of(c), None)
    b, _ = make_rule("poly", weight_decay=0.01, feedback_gain=0.3).deltas(s, Params.of(c), None)
    for da, db in zip(a.flat(), b.flat(), strict=True):
        assert torch.allclose(da, db, atol=1e-12)


def test_poly_features_by_hand():
    """Each polynomial feature against an explicit per-synapse loop."""
    from heterograd.rules import poly_delta

    g = torch.Generator().manual_seed(1)
    n, I, J = 5, 3, 4
    post = torch.randn(n, I, generator=g, dtype=torch.float64)
    pot = torch.randn(n, I, generator=g, dtype=torch.float64)
    pre = torch.randn(n, J, generator=g, dtype=torch.float64)
    w = torch.randn(I, J, generator=g, dtype=torch.float64)
    for k in range(8):
        theta = torch.zeros(8, dtype=torch.float64)
        theta[k] = 1.0
        got = poly_delta(theta, post, pot, pre, w)
        ref = torch.zeros(I, J, dtype=torch.float64)
        for i in range(I):
            for j in range(J):
                a, q, z = post[:, i], pot[:, i], pre[:, j]
                f = [a * z, q * z, a, z, a * a * z, a * z * z, w[i, j].expand(n), torch.ones(n)][k]
                ref[i, j] = -f.mean()
        assert torch.allclose(got, ref, atol=1e-12), f"feature {k}"


def test_register_custom_rule_without_touching_the_loop(digits):
    from dataclasses import dataclass
    from typing import ClassVar

    from heterograd import TrainConfig, Trainer, register_rule
    from heterograd.rules import RULES, Rule
    from heterograd.rules.bilinear import forward_delta

    @register_rule
    @dataclass(frozen=True)
    class SignOnly(Rule):
        """Forward rule using only the sign of the feedback potential."""

        name: ClassVar[str] = "test-sign"
        weight_decay: float = 0.0

        def deltas(self, signals, params, state):
            from heterograd.rules import ForwardSignals

            out = [
                forward_delta(ForwardSignals(s.h_pre, s.p, s.h, torch.sign(s.u)), W, b, self.weight_decay)
                for s, W, b in zip(signals.forward, params.W, params.b, strict=True)
            ]
            return Deltas([o[0] for o in out], [o[1] for o in out], [None] * len(params.B)), state

    try:
        s = Trainer(TrainConfig(rule="test-sign", epochs=3, lr=0.01, probes=False), digits).fit(None, progress=False)
        assert s.summary["test_accuracy"] > 0.5
    finally:
        RULES.pop("test-sign")
