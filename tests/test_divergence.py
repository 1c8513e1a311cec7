"""Divergence: a NaN / inf / exploding run stops at the logged step where it is detected, says why,
and keeps every metric and figure written so far; the CLI reports it and exits 0."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from heterograd.cli import main
from heterograd.data import Dataset, load_dataset
from heterograd.results import read_csv
from heterograd.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_dataset("digits", n_train=256, n_test=64)


def _cfg(**kw: object) -> TrainConfig:
    base = dict(data="digits", epochs=3, hidden=(32,), batch_size=16, seed=0, log_every=4, feedback_gain=1.0)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _check_run_dir(out: Path, summary: dict, n_rows: int) -> list[dict[str, str]]:
    """Everything written so far is complete and readable."""
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["diverged"] is True and on_disk["diverged_step"] == summary["diverged_step"]
    assert on_disk["diverged_reason"] == summary["diverged_reason"]
    json.loads((out / "config.json").read_text())
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == n_rows
    assert int(rows[-1]["step"]) == summary["diverged_step"]
    assert rows[-1]["diverged"] == summary["diverged_reason"]
    assert all(r["diverged"] == "" for r in rows[:-1])
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    if any(r.get("phi_1") for r in rows):  # probes.png is drawn when there are probe values
        assert (out / "probes.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".*.tmp*")), "no temp files left behind"
    return rows


@pytest.mark.parametrize(("activation", "lr"), [("tanh", 1e4), ("relu", 3.0)])
def test_huge_lr_diverges_cleanly(small: Dataset, tmp_path: Path, activation: str, lr: float) -> None:
    """tanh at lr 1e4 blows up at the first logged step; relu at lr 3 after an epoch of normal rows."""
    res = Trainer(_cfg(lr=lr, activation=activation), small).fit(tmp_path, progress=False)
    s = res.summary
    assert s["diverged"] is True
    assert s["diverged_reason"] in ("non-finite loss",) or s["diverged_reason"].startswith(
        ("non-finite weights", "weights exceeded")
    )
    assert s["diverged_step"] == res.rows[-1]["step"] and s["diverged_step"] % 4 == 0
    assert s["steps"] == s["diverged_step"], "training stopped at the detecting step"
    assert s["test_accuracy"] is None and math.isnan(s["test_loss"])
    rows = _check_run_dir(tmp_path, s, len(res.rows))
    # the rows before divergence are ordinary, finite rows with probes (and the epoch-end test metrics)
    for r in rows[:-1]:
        assert math.isfinite(float(r["train_loss"])) and r["phi_1"] != ""
    if activation == "relu":
        assert len(rows) > 4 and any(r["test_accuracy"] != "" for r in rows[:-1])


def test_weight_threshold_names_the_tensor(small: Dataset, tmp_path: Path) -> None:
    """Weights beyond ``divergence_threshold`` stop the run even while the loss is finite."""
    res = Trainer(_cfg(lr=0.5, divergence_threshold=0.3, probes=False), small).fit(tmp_path, progress=False)
    s = res.summary
    assert s["diverged"] and s["diverged_reason"].startswith("weights exceeded 0.3 (max |")
    assert math.isfinite(res.rows[-1]["train_loss"])
    _check_run_dir(tmp_path, s, len(res.rows))


def test_nan_in_data_is_caught_within_one_logged_step(small: Dataset, tmp_path: Path) -> None:
    """A NaN appearing mid-run (a poisoned example) is caught at the next logged step, not later."""
    seen: list[int] = []
    tr = Trainer(_cfg(log_every=5, probes=False), dataclasses.replace(small, x_train=small.x_train.clone()))
    # poison some examples behind the Dataset's back (its constructor refuses NaN): shuffling decides
    # when the first poisoned batch comes
    tr.data.x_train[200:] = math.nan
    orig = tr.train_step

    def spy(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = orig(xb, yb)
        if not seen and not math.isfinite(float(loss)):
            seen.append(tr.step_count)
        return loss

    tr.train_step = spy  # type: ignore[method-assign]
    res = tr.fit(tmp_path, progress=False)
    s = res.summary
    assert s["diverged"] and s["diverged_reason"] == "non-finite loss"
    first_bad = seen[0]
    next_log = min(first_bad + (-first_bad) % 5, (first_bad + 15) // 16 * 16)  # log_every or end of epoch
    assert s["diverged_step"] == next_log
    _check_run_dir(tmp_path, s, len(res.rows))


def test_cli_reports_divergence_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--n-train", "128", "--n-test", "32", "--hidden", "16", "--epochs", "2"]
    main([*argv, "--lr", "1e5", "--no-progress", "--out", str(out)])  # returns normally: exit code 0
    text = capsys.readouterr().out
    assert "(diverged)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert f"diverged at step {summary['diverged_step']} ({summary['diverged_reason']})" in text
    assert "metrics and figures up to that step are kept" in text and "smaller --lr" in text


def test_healthy_run_is_not_flagged(small: Dataset) -> None:
    res = Trainer(_cfg(lr=0.05, probes=False, epochs=1), small).fit(None, progress=False)
    assert res.summary["diverged"] is False and res.summary["diverged_reason"] is None
    assert all("diverged" not in r for r in res.rows)
