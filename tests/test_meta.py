"""The effective-learning-rate probe φH and the ``meta`` / ``optimizers`` reproductions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from heterograd import Circuit, get_loss, make_rule
from heterograd.errors import HeterogradError
from heterograd.probes import estimate_preconditioner, preconditioner


def _g(n: int = 400, m: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_recovers_a_known_matrix_learning_rate() -> None:
    g = _g()
    q, _ = torch.linalg.qr(_g(6, 6, seed=1))
    lam = torch.tensor([0.2, 0.5, 1.0, 1.5, 2.0, 4.0], dtype=torch.float64)
    A = q @ torch.diag(lam) @ q.t()  # symmetric positive definite φH
    est = estimate_preconditioner(g @ A.t(), g, energy=1.0)
    assert est.k == 6 and est.n == 400
    A_full = est.basis @ est.A @ est.basis.t()
    assert torch.allclose(A_full, A, atol=1e-8)
    assert torch.allclose(est.eigenvalues, lam, atol=1e-8)
    assert est.condition == pytest.approx(20.0, rel=1e-6)
    assert est.negative_fraction == 0.0 and est.r2 == pytest.approx(1.0)
    assert est.phi == pytest.approx(float((g @ A.t() * g).sum() / (g * g).sum()))


def test_scalar_and_sign_cases() -> None:
    g = _g()
    same = estimate_preconditioner(g, g, energy=1.0)
    assert same.phi == pytest.approx(1.0) and same.dist_scalar < 1e-8 and same.condition == pytest.approx(1.0)
    neg = estimate_preconditioner(-0.5 * g, g, energy=1.0)
    assert neg.phi == pytest.approx(-0.5) and neg.negative_fraction == 1.0 and math.isinf(neg.condition)
    assert torch.allclose(neg.h_eigenvalues, torch.ones(6, dtype=torch.float64))
    noise = estimate_preconditioner(_g(seed=5), g, energy=1.0)  # u unrelated to g
    assert abs(noise.phi) < 0.2 and noise.r2 < 0.1


def test_fit_is_restricted_to_the_gradient_subspace() -> None:
    z = _g(300, 3)
    basis, _ = torch.linalg.qr(_g(10, 3, seed=2))  # (10, 3)
    g = z @ basis.t()  # gradients span 3 of 10 dims
    est = estimate_preconditioner(2.0 * g, g)
    assert est.k == 3
    assert torch.allclose(est.A, 2.0 * torch.eye(3, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"u": torch.zeros(10, 3), "g": torch.zeros(10, 4)}, "must both be"),
        ({"u": _g(), "g": _g(), "energy": 0.0}, "energy"),
        ({"u": _g(), "g": _g(), "ridge": -1.0}, "ridge"),
        ({"u": _g(3, 6), "g": _g(3, 6)}, "at least 4"),
        ({"u": _g(), "g": torch.zeros(400, 6, dtype=torch.float64)}, "zero"),
    ],
)
def test_bad_input_is_one_line_error(kwargs: dict, match: str) -> None:
    with pytest.raises(HeterogradError, match=match):
        estimate_preconditioner(**kwargs)


def _batch(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 12, generator=gen, dtype=torch.float64), torch.randint(0, 5, (n,), generator=gen)


def test_circuit_bp_has_identity_h() -> None:
    c = Circuit([12, 16, 16, 5], seed=0, dtype=torch.float64)
    x, y = _batch()
    est = preconditioner(c, make_rule("bp"), get_loss("ce"), x, y)
    assert set(est) == {1, 2}
    for e in est.values():
        assert e.phi == pytest.approx(1.0, abs=1e-10)
        assert float((e.eigenvalues - 1).abs().max()) < 1e-8


def test_circuit_scaled_transpose_feedback_gives_product_of_gains() -> None:
    """B = c Wᵀ (c = 0.5) => u_l = φ_l g_l with φ_2 = c, φ_1 = c²: φH is the scalar φ_l."""
    c = Circuit([12, 16, 16, 5], feedback_init="transpose", seed=0, dtype=torch.float64)
    with torch.no_grad():
        for B in c.B:
            B.mul_(0.5)
    x, y = _batch()
    est = preconditioner(c, make_rule("hsp", feedback_gain=0.5), get_loss("ce"), x, y)
    for layer, phi in [(2, 0.5), (1, 0.25)]:
        assert est[layer].phi == pytest.approx(phi, abs=1e-10)
        assert float((est[layer].eigenvalues - phi).abs().max()) < 1e-8
        assert est[layer].dist_scalar < 1e-8


def test_random_feedback_is_not_a_scalar_learning_rate() -> None:
    c = Circuit([12, 16, 16, 5], seed=0, dtype=torch.float64)
    x, y = _batch()
    est = preconditioner(c, make_rule("fa"), get_loss("ce"), x, y, layers=[2])
    assert set(est) == {2}
    assert est[2].dist_scalar > 1.0 and est[2].negative_fraction > 0.0
    with pytest.raises(HeterogradError, match="not a hidden layer"):
        preconditioner(c, make_rule("fa"), get_loss("ce"), x, y, layers=[3])


def test_experiments_are_registered() -> None:
    from heterograd.experiments import load_all

    names = load_all()
    assert "optimizers" in names and "meta" in names


@pytest.mark.parametrize("name", ["optimizers", "meta"])
def test_quick_repro_writes_a_verdict(name: str, tmp_path: Path) -> None:
    from heterograd.experiments import run_experiment

    s = run_experiment(name, tmp_path, quick=True, seed=0)
    assert "error" not in s, s.get("traceback")
    saved = json.loads((tmp_path / name / "summary.json").read_text())
    assert saved["holds"] is s["holds"] and s["holds"]
    for f in s["figures"]:
        assert (tmp_path / name / f).stat().st_size > 1000
    if name == "optimizers":
        assert "| adam |" in (tmp_path / name / "table.md").read_text()
