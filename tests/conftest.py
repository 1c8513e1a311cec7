"""Shared fixtures: small datasets and a strict float64 mode for equivalence tests."""

from __future__ import annotations

import pytest
import torch

from heterograd.data import Dataset, load_dataset

# The test networks are tiny: one intra-op thread avoids thread thrashing on small, shared CPUs.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def teacher() -> Dataset:
    return load_dataset("teacher", n_train=256, n_test=64)


@pytest.fixture
def float64():
    """Equinox-style strict mode: float64 default and deterministic algorithms for the test's duration."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
        torch.use_deterministic_algorithms(False)


@pytest.fixture
def autograd_forbidden(monkeypatch):
    """Any call into autograd fails the test; grad mode is off (the no-autograd house rule)."""

    def boom(*a, **k):
        raise AssertionError("autograd was called during learning")

    monkeypatch.setattr(torch.autograd, "grad", boom)
    monkeypatch.setattr(torch.autograd, "backward", boom)
    monkeypatch.setattr(torch.Tensor, "backward", boom)
    with torch.autograd.set_grad_enabled(False):
        yield
