"""Probe correctness on constructed cases (docs/theory.md sections 3-4)."""

from __future__ import annotations

import math

import pytest
import torch

from heterograd import Circuit, get_loss
from heterograd.autodiff import potential_gradients, true_gradients
from heterograd.probes import align, dc_score, matrix_angle, measure, neuron_phi, phi


def test_phi_and_align_are_one_when_u_is_the_gradient():
    g = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    assert phi(g, g) == pytest.approx(1.0)
    assert align(g, g) == pytest.approx(1.0)
    assert phi(-2 * g, g) == pytest.approx(-2.0)
    assert align(3 * g, g) == pytest.approx(1.0)
    assert math.isnan(phi(g, torch.zeros_like(g)))


@pytest.mark.parametrize("c", [1.0, 0.5, -1.0, 2.0])
def test_phi_equals_feedback_gain_when_B_is_c_W_transpose(c):
    circ = Circuit([6, 8, 7, 3], seed=0, dtype=torch.float64, feedback_init="transpose")
    with torch.no_grad():
        for k, e in enumerate(circ.edges):
            circ.B[k].copy_(c * circ.W[e.src - 1].t())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    loss = get_loss("ce")
    trace = circ.run_forward(x)
    u = circ.run_feedback(trace, circ.output_error(trace, loss.error(trace.output, y)))
    m = measure(circ, x, y, loss, u)
    # φ_l = Π_{k>l} c_k: layer 2 gets c, layer 1 gets c²
    assert m["phi_2"] == pytest.approx(c, abs=1e-10)
    assert m["phi_1"] == pytest.approx(c * c, abs=1e-10)
    assert m["align_2"] == pytest.approx(math.copysign(1.0, c), abs=1e-10)
    # DC: all hidden neurons share a sign iff c > 0; for c < 0 layer 2 (7 neurons) flips against layer 1 (8)
    assert m["dc_score"] == pytest.approx(1.0 if c > 0 else (8**2 + 7**2) / 15**2)
    assert m["angle_2"] == pytest.approx(0.0 if c > 0 else 180.0, abs=1e-5)


def test_dc_score_of_known_sign_pattern():
    assert dc_score([1.0, 1.0, 1.0]) == 1.0
    assert dc_score([1.0, -1.0]) == 0.5
    assert dc_score([1, 2, -1, 3]) == pytest.approx((9 + 1) / 16)
    assert dc_score([0.5, float("nan"), -0.2, 0.0, 3.0]) == pytest.approx((4 + 1) / 9)
    assert math.isnan(dc_score([]))


def test_neuron_phi_per_column():
    g = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    u = torch.tensor([[2.0, -2.0], [6.0, 5.0]])
    assert torch.allclose(neuron_phi(u, g), torch.tensor([2.0, -1.0]))


def test_matrix_angle():
    a = torch.eye(3)
    assert matrix_angle(a, a) == pytest.approx(0.0, abs=1e-6)
    assert matrix_angle(a, -a) == pytest.approx(180.0)
    assert matrix_angle(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(90.0)


def test_true_gradients_match_manual_backprop():
    circ = Circuit([5, 4, 3], "sigmoid", seed=2, dtype=torch.float64, feedback_init="transpose")
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
    loss = get_loss("ce")
    trace = circ.run_forward(x)
    u = circ.run_feedback(trace, circ.output_error(trace, loss.error(trace.output, y)))
    g = potential_gradients(circ, x, y, loss)
    for l in (1, 2):
        assert torch.allclose(u[l], g[l], atol=1e-12)
    _, gW, gb = true_gradients(circ, x, y, loss)
    assert torch.allclose(gW[0], u[1].t() @ x / 6, atol=1e-12)
    assert torch.allclose(gb[1], u[2].mean(0), atol=1e-12)


def test_update_cosine_is_one_for_bp():
    from heterograd import TrainConfig, Trainer

    tr = Trainer(TrainConfig(rule="bp", epochs=1, n_train=128, n_test=32, probes=True))
    m = tr.probe()
    for l in (1, 2, 3):
        assert m[f"dw_cos_{l}"] == pytest.approx(1.0, abs=1e-5)
