"""Property-based tests over random configurations.

Valid ones (depths, widths, topologies incl. amorphous, densities, rules, activations, motifs, tasks):
a few training steps keep every shape, keep values finite, and, for local rules, never touch autograd.
Invalid ones: rejected with one clear line (:class:`HeterogradError`), never a raw Python exception.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heterograd import Circuit
from heterograd.circuits import ACTIVATIONS, FEEDBACK_INITS, TOPOLOGIES
from heterograd.data import Dataset
from heterograd.errors import HeterogradError
from heterograd.optim import MOTIFS
from heterograd.rules import RULES, make_rule
from heterograd.train import TrainConfig, Trainer

RULE_NAMES = [r for r in ("bp", "fa", "hsp", "poly") if r in RULES]
SETTINGS = settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _dataset(seed: int, n_in: int, n_out: int, classification: bool, n: int = 24) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 8, n_in, generator=g)
    if classification:
        y = torch.randint(0, n_out, (n + 8,), generator=g)
        y[:n_out] = torch.arange(n_out)  # every class present
    else:
        y = torch.randn(n + 8, n_out, generator=g)
    return Dataset("synthetic", x[:n], y[:n], x[n:], y[n:], n_out if classification else None)


@st.composite
def valid_runs(draw: st.DrawFn) -> tuple[TrainConfig, Dataset]:
    classification = draw(st.booleans())
    n_out = draw(st.integers(2, 4)) if classification else draw(st.integers(1, 3))
    ds = _dataset(draw(st.integers(0, 2**16)), draw(st.integers(1, 6)), n_out, classification)
    hidden = tuple(draw(st.lists(st.integers(1, 12), min_size=0, max_size=3)))
    topology = draw(st.sampled_from(TOPOLOGIES))
    skips = topology in ("direct", "amorphous") and len(hidden) >= 2  # edges that skip layers: B = ±Wᵀ undefined
    cfg = TrainConfig(
        data="synthetic",
        rule=draw(st.sampled_from(RULE_NAMES)),
        hidden=hidden,
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        topology=topology,
        density=draw(st.floats(0.05, 1.0)) if topology in ("sparse", "amorphous") else None,
        feedback_init="random" if skips else draw(st.sampled_from(FEEDBACK_INITS)),
        optimizer=draw(st.sampled_from(sorted(MOTIFS))),
        lr=draw(st.floats(1e-4, 0.02)),
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 1e-2])),
        batch_size=draw(st.integers(1, 8)),
        epochs=1,
        seed=draw(st.integers(0, 10_000)),
        log_every=draw(st.integers(1, 4)),
        probes=False,
    )
    return cfg, ds


def _forbid_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("autograd was called by a local rule")

    monkeypatch.setattr(torch.autograd, "grad", boom)
    monkeypatch.setattr(torch.autograd, "backward", boom)
    monkeypatch.setattr(torch.Tensor, "backward", boom)


@SETTINGS
@given(run=valid_runs())
def test_training_keeps_shapes_finite_values_and_locality(run: tuple[TrainConfig, Dataset]) -> None:
    cfg, ds = run
    local = not make_rule(cfg.rule).uses_autograd
    with pytest.MonkeyPatch.context() as mp:
        if local:
            _forbid_autograd(mp)
        tr = Trainer(cfg, ds)
        shapes = [tuple(t.shape) for t in tr.circuit.plastic_tensors()]
        res = tr.fit(None, progress=False, handle_signals=False)
    assert [tuple(t.shape) for t in res.circuit.plastic_tensors()] == shapes
    assert list(res.circuit.sizes) == [ds.input_dim, *cfg.hidden, ds.output_dim]
    assert all(not t.requires_grad for t in res.circuit.plastic_tensors())
    assert res.summary["diverged"] is False, res.summary
    assert all(torch.isfinite(t).all() for t in res.circuit.plastic_tensors())
    assert res.summary["steps"] == tr.steps_per_epoch == max(1, 24 // cfg.batch_size)
    assert all(math.isfinite(r["train_loss"]) for r in res.rows)
    out = res.circuit(ds.x_test)
    assert out.shape == (ds.x_test.shape[0], ds.output_dim) and torch.isfinite(out).all()
    for k, e in enumerate(res.circuit.edges):  # fixed feedback masks survive plasticity
        m = res.circuit.mask(k)
        if m is not None:
            assert torch.all(res.circuit.B[k][m == 0] == 0), e.name


# -------------------------------------------------------------------------------------- invalid input
_names = st.text(st.characters(categories=["L", "N", "P"]), min_size=0, max_size=8)


def _is_set(v: object) -> bool:
    return v is not None


_not_numbers = st.one_of(st.text(max_size=4), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
INVALID_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "rule": st.one_of(_names.filter(lambda s: s not in RULES), st.integers(), st.none()),
    "activation": _names.filter(lambda s: s not in ACTIVATIONS),
    "topology": _names.filter(lambda s: s not in TOPOLOGIES),
    "feedback_init": _names.filter(lambda s: s not in FEEDBACK_INITS),
    "optimizer": _names.filter(lambda s: s not in MOTIFS),
    "epochs": st.one_of(st.integers(max_value=0), st.floats(0.1, 9.9), _not_numbers),
    "batch_size": st.one_of(st.integers(max_value=0), st.floats(), _not_numbers),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.floats(), st.text(max_size=3)),
    # None is valid for lr: "not set", the optimiser's default step size
    "lr": st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf]), _not_numbers.filter(_is_set)),
    # None is valid for these two: "not set", resolved where the rule / topology uses them
    "weight_decay": st.one_of(st.floats(max_value=-1e-12), st.just(math.nan), _not_numbers.filter(_is_set)),
    "density": st.one_of(
        st.floats(max_value=0.0), st.floats(min_value=1.0 + 1e-9), st.just(math.nan), _not_numbers.filter(_is_set)
    ),
    "hidden": st.one_of(
        st.lists(st.integers(max_value=0), min_size=1, max_size=3),
        st.lists(st.floats(0.5, 9.5).filter(lambda v: v != int(v)), min_size=1, max_size=2),
        st.integers(),
        st.text(alphabet="abc,;-", min_size=1, max_size=6).filter(lambda s: s.strip().lower() not in ("", "none")),
    ),
    "log_every": st.one_of(st.integers(max_value=0), st.floats(0.1, 3.0)),
    "n_train": st.one_of(st.integers(max_value=0), st.floats(1.5, 9.5)),
    "divergence_threshold": st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.text(max_size=2)),
}


@st.composite
def invalid_configs(draw: st.DrawFn) -> tuple[str, object]:
    field = draw(st.sampled_from(sorted(INVALID_FIELDS)))
    return field, draw(INVALID_FIELDS[field])


@SETTINGS
@given(bad=invalid_configs())
def test_invalid_configs_get_one_clear_line(bad: tuple[str, object]) -> None:
    field, value = bad
    with pytest.raises(HeterogradError) as info:
        Trainer(TrainConfig(**{field: value}), _dataset(0, 3, 2, True))  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg and "\n" not in msg
    flag = field.replace("_", "-")
    assert field.replace("_", " ") in msg or flag in msg or field in msg, msg


@SETTINGS
@given(
    sizes=st.one_of(
        st.lists(st.integers(1, 9), max_size=1),
        st.lists(st.integers(-5, 9), min_size=2, max_size=5).filter(lambda s: min(s) <= 0),
        st.lists(st.one_of(st.floats(), st.text(max_size=2), st.none()), min_size=2, max_size=4),
        st.integers(),
        st.text(max_size=5),
    ),
    topology=st.sampled_from(TOPOLOGIES),
)
def test_invalid_circuit_sizes_get_one_clear_line(sizes: object, topology: str) -> None:
    with pytest.raises(HeterogradError) as info:
        Circuit(sizes, topology=topology)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and "size" in str(info.value)
