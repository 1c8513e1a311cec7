"""The small transformer: a plain nn.Module, and it learns the sorting task by hsp through convert."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heterograd import HeterogradError, convert
from heterograd.data import sorting_task
from heterograd.data.sequences import IGNORE
from heterograd.models import GPT, GPTConfig
from heterograd.nn import PlasticEmbedding, PlasticLayerNorm, PlasticLinear


def test_sorting_task_targets():
    x, y = sorting_task(5, length=4, vocab=7, seed=2)
    assert x.shape == y.shape == (5, 7)
    assert (y[:, :3] == IGNORE).all()
    digits = x[:, :4]
    assert torch.equal(y[:, 3:], digits.sort(1).values)
    assert torch.equal(sorting_task(5, 4, 7, seed=2)[0], x)
    with pytest.raises(HeterogradError):
        sorting_task(0)


def test_gpt_is_plain_torch_and_converts_completely():
    m = GPT(GPTConfig(vocab=6, block=8, layers=1, heads=2, dim=16), seed=0)
    out = m(torch.zeros(2, 8, dtype=torch.long))
    assert out.shape == (2, 8, 6)
    out.sum().backward()  # plain autograd works before conversion
    convert(m, "hsp")
    kinds = {type(mod) for mod in m.modules()}
    assert {PlasticLinear, PlasticEmbedding, PlasticLayerNorm} <= kinds


def _accuracy(m, x, y):
    with torch.no_grad():
        p = m(x).argmax(-1)
    mask = y != IGNORE
    return float((p[mask] == y[mask]).float().mean())


@pytest.mark.slow
def test_gpt_learns_sorting_by_hsp():
    L, V = 5, 6
    x, y = sorting_task(4096, L, V, seed=0)
    xt, yt = sorting_task(512, L, V, seed=1)
    m = convert(GPT(GPTConfig(vocab=V, block=2 * L, layers=2, heads=2, dim=32), seed=0), "hsp", seed=0)
    chance = _accuracy(m, xt, yt)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        loss = F.cross_entropy(m(x[idx]).reshape(-1, V), y[idx].reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = _accuracy(m, xt, yt)
    assert chance < 0.4 and acc > 0.9, (chance, acc)
