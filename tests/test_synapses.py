"""Synapse types: transport with B = W is the adjoint of forward, correlation is the weight gradient."""

from __future__ import annotations

import pytest
import torch

from heterograd.rules.base import ForwardSignals
from heterograd.rules.bilinear import neg_correlation, neg_outer_mean
from heterograd.synapses import DENSE, Conv, Embedding

CONVS = [
    ((4, 2, 3), dict(stride=2, padding=1)),
    ((4, 1, 3), dict(padding=2, dilation=2, groups=2)),
    ((6, 2, 3, 3), dict(stride=2, padding=1)),
    ((6, 2, 3, 3), dict(padding=(2, 1), dilation=(2, 1), groups=2)),
    ((4, 1, 3, 3), dict(padding="same", groups=4)),  # depthwise
]


@pytest.mark.parametrize(("shape", "kw"), CONVS)
def test_conv_transport_and_correlation_are_the_adjoint_and_weight_gradient(float64, shape, kw):
    syn = Conv(shape, **kw)
    g = torch.Generator().manual_seed(0)
    c_in = shape[1] * syn.groups
    x = torch.randn(3, c_in, *([9] * (len(shape) - 2)), generator=g).requires_grad_(True)
    W = torch.randn(shape, generator=g).requires_grad_(True)
    p = syn.forward(x, W)
    u = torch.randn(p.shape, generator=g)
    (p * u).sum().backward()
    v, C = syn.transport_and_correlation(u, W.detach(), x.detach(), 0.5, True)
    assert torch.allclose(v, x.grad, atol=1e-12)
    assert torch.allclose(C, 0.5 * W.grad, atol=1e-12)
    assert torch.allclose(syn.transport(u, W.detach(), x.detach()), x.grad, atol=1e-12)
    assert torch.allclose(syn.correlation(u, x.detach(), 1.0), W.grad, atol=1e-12)
    assert torch.allclose(syn.bias_correlation(u, 1.0), u.sum([0, *range(2, u.dim())]), atol=1e-12)


def test_dense_with_positions_and_embedding(float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 3, generator=g).requires_grad_(True)
    W = torch.randn(6, 3, generator=g).requires_grad_(True)
    p = DENSE.forward(x, W)
    u = torch.randn(p.shape, generator=g)
    (p * u).sum().backward()
    assert torch.allclose(DENSE.transport(u, W.detach().t(), x), x.grad, atol=1e-12)  # B laid out like Wᵀ
    assert torch.allclose(DENSE.correlation(u, x.detach(), 1.0), W.grad, atol=1e-12)
    E = Embedding(7, padding_idx=0)
    idx = torch.randint(0, 7, (4, 5), generator=g)
    We = torch.randn(7, 3, generator=g).requires_grad_(True)
    pe = E.forward(idx, We)
    ue = torch.randn(pe.shape, generator=g)
    (pe * ue).sum().backward()
    assert torch.allclose(E.correlation(ue, idx, 1.0), We.grad, atol=1e-12)


def test_dense_correlation_is_the_circuit_hot_path_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    for n in (8, 12):
        u, h = torch.randn(n, 5, generator=g), torch.randn(n, 7, generator=g)
        sig = ForwardSignals(h, u, u, u)
        assert torch.equal(neg_correlation(sig), neg_outer_mean(u, h))


def test_same_padding_that_would_be_asymmetric_is_an_error():
    from heterograd import HeterogradError

    with pytest.raises(HeterogradError, match="asymmetrically"):
        Conv((2, 2, 4, 4), padding="same")
