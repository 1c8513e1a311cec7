"""Shared fixtures: small datasets, a strict float64 mode for equivalence tests, and the real-data marker.

Tests that need a data set that is not part of the package (Fashion-MNIST, from the Debian package
``dataset-fashion-mnist``) carry ``@pytest.mark.needs_data("fashion-mnist")``: they are skipped with a one-line
reason when the files are absent, so the test command passes on a fresh machine, and they fail instead when
``HETEROGRAD_REQUIRE_DATA=1`` (CI sets it, so CI can never skip them silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from heterograd.data import Dataset, load_dataset, sources

REQUIRE_DATA_ENV = "HETEROGRAD_REQUIRE_DATA"
INSTALL_HINT = {"fashion-mnist": "apt-get install dataset-fashion-mnist (Debian/Ubuntu)"}


def data_dir(name: str) -> Path:
    """Where the optional data set ``name`` lives (looked up at call time, so tests may monkeypatch it)."""
    if name == "fashion-mnist":
        return sources.FASHION_MNIST_DIR
    raise ValueError(f"unknown optional data set {name!r}; known: {', '.join(INSTALL_HINT)}")


def require_data(name: str) -> None:
    """Skip the running test when data set ``name`` is absent, or fail it under ``HETEROGRAD_REQUIRE_DATA=1``."""
    where = data_dir(name)
    if where.is_dir():
        return
    msg = f"{name} is not installed at {where} (install: {INSTALL_HINT[name]})"
    if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
        pytest.fail(f"{msg}; {REQUIRE_DATA_ENV} is set, so its tests must run", pytrace=False)
    pytest.skip(msg)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_data(name): needs an optional data set (fashion-mnist); skipped when absent, "
        f"a failure when {REQUIRE_DATA_ENV}=1",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_data"):
        require_data(*mark.args)


@pytest.fixture(autouse=True)
def _reading_fashion_mnist_needs_the_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test without ``needs_data("fashion-mnist")`` that reads the real files fails, with or without them."""
    if request.node.get_closest_marker("needs_data") is None:
        real = sources._load_idx

        def guarded(name: str, *args, **kwargs):
            if name == "fashion-mnist":
                raise AssertionError("this test reads Fashion-MNIST: mark it @pytest.mark.needs_data('fashion-mnist')")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(sources, "_load_idx", guarded)
    yield


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
