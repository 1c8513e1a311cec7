"""Verdicts can fail: each experiment's ``judge`` gets numbers for which it must say "holds" and numbers for
which it must not (the quick runs in ``test_repro.py`` and ``test_meta.py`` only show the true side)."""

from __future__ import annotations

import math

import pytest

from heterograd.experiments import benchmark, evolution, hebbian, hs, optimizers

NAN = math.nan


@pytest.mark.parametrize(
    ("args", "holds"),
    [
        ((1e-8, 0.01, True, True), True),
        ((1e-5, 0.01, True, True), False),  # the decay departs from (1 - ηλ)^t
        ((1e-8, 0.2, True, True), False),  # φ_l misses Π c
        ((1e-8, NAN, True, True), False),  # a diverged run's φ
        ((1e-8, 0.01, False, True), False),  # a counted circuit stopped learning
        ((1e-8, 0.01, True, False), False),  # the c < 0 control was not flagged
    ],
)
def test_hs_judge(args, holds):
    assert hs.judge(*args) is holds


@pytest.mark.parametrize(
    ("means", "noise", "clean", "holds"),
    [
        ([0.1, 0.3, 0.6], [-0.2], [0.3], True),
        ([0.1, 0.6, 0.3], [-0.2], [0.3], False),  # not increasing in λ
        ([0.1, 0.2, 0.4], [-0.2], [0.3], False),  # below 0.5 at the largest λ
        ([0.1, 0.3, 0.6], [0.1], [0.3], False),  # label noise does not turn the output anti-Hebbian
        ([0.1, 0.3, 0.6], [-0.2], [-0.1], False),  # clean output not Hebbian
        ([0.1, NAN, 0.6], [-0.2], [0.3], False),  # a diverged λ
    ],
)
def test_hebbian_judge(means, noise, clean, holds):
    assert hebbian.judge(means, noise, clean) is holds


@pytest.mark.parametrize(
    ("gaps", "holds"),
    [
        ({"a": (0.01, 0.02), "b": (0.0, 0.03)}, True),
        ({"a": (0.01, 0.02), "b": (-0.01, 0.01)}, False),  # hsp below fa on one dataset
        ({"a": (0.01, 0.05), "b": (0.0, 0.01)}, False),  # more than 3 points behind bp
        ({"a": (NAN, NAN), "b": (0.0, 0.01)}, False),  # a diverged cell
        ({}, False),  # nothing measured
    ],
)
def test_benchmark_judge(gaps, holds):
    g = {k: {"hsp_minus_fa": a, "bp_minus_hsp": b} for k, (a, b) in gaps.items()}
    assert benchmark.judge(g) is holds


@pytest.mark.parametrize(
    ("args", "holds"),
    [
        ((1.2, 0.9, 0.8), True),
        ((1.6, 0.9, 0.8), False),  # loss more than 1.5x the reference's
        ((1.2, 0.7, 0.8), False),  # less consistent than the reference
        ((NAN, NAN, 0.8), False),  # every rule diverged
    ],
)
def test_evolution_judge(args, holds):
    assert evolution.judge(*args) is holds


def _acc(fa: float = 0.8, hsp: float = 0.85, bp: float = 0.87) -> dict[str, dict[str, float]]:
    return {m: {"fa": fa, "hsp": hsp, "bp": bp} for m in optimizers.MOTIF_SETTINGS}


@pytest.mark.parametrize(
    ("acc", "holds"),
    [
        (_acc(), True),
        (_acc(fa=0.3), False),  # fa not clearly above chance
        (_acc(hsp=0.7), False),  # hsp more than 5 points behind bp
        (_acc(fa=NAN), False),  # a diverged run
        (_acc(hsp=NAN), False),
        (_acc(bp=NAN), False),
    ],
)
def test_optimizers_judge(acc, holds):
    assert optimizers.judge(acc, chance=0.1) is holds
