"""``heterograd tune``: studies on Optuna, the validation split, the search space, storage shared by workers."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from heterograd.cli import main
from heterograd.config import TrainConfig
from heterograd.data import load_dataset
from heterograd.errors import HeterogradError
from heterograd.tune import StudyOptions, default_space, run_study, space_from_mapping, validation_split
from heterograd.tune import study as study_module

# a small circuit and a short budget: each trial takes a fraction of a second
SMALL = ["--data", "digits", "--rule", "hsp", "--hidden", "32", "--n-train", "480", "--epochs", "1"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tune_writes_trials_best_config_figures_and_a_rerun_continues(capsys, tmp_path):
    out = tmp_path / "study"
    code, stdout, _ = run_cli(capsys, "tune", *SMALL, "--n-trials", "4", "--startup-trials", "2", "--out", str(out))
    assert code == 0, stdout
    assert len(rows(out / "trials.csv")) == 4
    for name in ("best.json", "history.png", "params.png", "summary.json", "space.json", "study.db"):
        assert (out / name).exists(), name
    assert "best validation error" in stdout
    best = json.loads((out / "best.json").read_text())
    assert best["n_train"] == 480 and best["epochs"] == 1 and best["rule"] == "hsp"  # the whole (first 480) set
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"]["n_validation"] == 80 and summary["split"]["n_train"] == 400
    searched = set(summary["space"])
    assert searched == {"lr", "weight_decay", "feedback_gain"}  # hsp under sgd: c is searched
    # best.json is a config that train takes as it is
    code, stdout, err = run_cli(capsys, "train", "--config", str(out / "best.json"), "--out", str(tmp_path / "t"))
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "config.json").read_text())["lr"] == pytest.approx(best["lr"])
    # the same command again adds trials to the same study
    code, _, _ = run_cli(capsys, "tune", *SMALL, "--n-trials", "2", "--startup-trials", "2", "--out", str(out))
    assert code == 0
    numbers = [int(r["number"]) for r in rows(out / "trials.csv")]
    assert numbers == list(range(6))


def test_same_seed_same_trials(tmp_path):
    base = TrainConfig(data="digits", rule="hsp", hidden=(16,), n_train=300, epochs=1)
    values = []
    for k in range(2):
        res = run_study(base, default_space(base), StudyOptions(n_trials=3, startup_trials=1), tmp_path / str(k))
        values.append([(r["lr"], r["validation_error_pct"]) for r in rows(tmp_path / str(k) / "trials.csv")])
        assert res.summary["trials"] == 3
    assert values[0] == values[1]


def test_a_rerun_with_other_options_is_refused(capsys, tmp_path):
    out = tmp_path / "s"
    assert run_cli(capsys, "tune", *SMALL, "--n-trials", "1", "--out", str(out))[0] == 0
    code, _, err = run_cli(capsys, "tune", *SMALL, "--batch-size", "16", "--n-trials", "1", "--out", str(out))
    assert code == 2 and "other training options (batch_size)" in err and len(err.strip().splitlines()) == 1


def test_a_rerun_whose_base_differs_only_in_a_searched_field_continues(tmp_path):
    """A searched field's base value is replaced by every trial: a changed default there is no other study."""
    base = TrainConfig(data="digits", rule="hsp", hidden=(16,), n_train=300, epochs=1, feedback_gain=1.0)
    space = space_from_mapping(
        {"lr": {"low": 1e-3, "high": 0.1, "log": True}, "feedback_gain": {"low": 0.1, "high": 2.0}}, base
    )
    run_study(base, space, StudyOptions(n_trials=1, startup_trials=1), tmp_path)
    other = TrainConfig(data="digits", rule="hsp", hidden=(16,), n_train=300, epochs=1, feedback_gain=0.5)
    res = run_study(other, space, StudyOptions(n_trials=1, startup_trials=1), tmp_path)
    assert res.summary["trials"] == 2
    unsearched = TrainConfig(data="digits", rule="hsp", hidden=(16,), n_train=300, epochs=1, feedback_gain=0.5,
                             batch_size=16)  # fmt: skip
    with pytest.raises(HeterogradError, match=r"other training options \(batch_size\)"):
        run_study(unsearched, space, StudyOptions(n_trials=1, startup_trials=1), tmp_path)


def test_config_differences_ignores_circuit_options_a_zoo_model_does_not_use():
    """heterograd 0.2 recorded a LeNet-5 run's unused hidden/activation; 0.3 records None: the same run."""
    new = json.loads(json.dumps(TrainConfig(data="digits", model="lenet5", rule="fa").to_dict()))
    old = {**new, "hidden": [128, 128], "activation": "tanh", "topology": "layered"}
    assert new["hidden"] is None and study_module.config_differences(old, new) == []
    assert study_module.config_differences({**old, "lr": 0.5}, new) == ["lr"]
    mlp = json.loads(json.dumps(TrainConfig(data="digits", model="mlp", rule="fa").to_dict()))
    assert study_module.config_differences({**mlp, "hidden": [7]}, mlp) == ["hidden"]  # mlp uses hidden


def test_the_study_never_sees_the_test_set(tmp_path, monkeypatch):
    ds = load_dataset("digits")
    seen = []
    real = study_module.make_trainer

    def spy(cfg, dataset=None):
        seen.append((cfg, dataset))
        return real(cfg, dataset)

    monkeypatch.setattr(study_module, "make_trainer", spy)
    base = TrainConfig(data="digits", rule="fa", hidden=(16,), epochs=1)
    res = run_study(base, default_space(base), StudyOptions(n_trials=2, val_size=300), tmp_path, dataset=ds)
    split, record = validation_split(ds, 300, base.seed)
    assert res.summary["split"] == record
    assert len(seen) == 2
    for cfg, d in seen:
        assert cfg.n_test is None and cfg.n_train is None
        assert torch.equal(d.x_test, split.x_test) and d.x_test.shape[0] == 300
        # every "test" row the trainer evaluates is a training row; none is a test row
        train_rows = {tuple(r.tolist()) for r in ds.x_train}
        assert all(tuple(r.tolist()) in train_rows for r in d.x_test)
        assert d.x_train.shape[0] + d.x_test.shape[0] == ds.x_train.shape[0]
    # the split is seeded: another seed carves another validation set
    assert validation_split(ds, 300, 1)[1]["validation_indices_sha256"] != record["validation_indices_sha256"]


def test_space_gain_only_under_sgd_type_optimisers():
    hsp = TrainConfig(data="digits", rule="hsp", optimizer="momentum")
    assert set(default_space(hsp).names()) == {"lr", "momentum", "weight_decay", "feedback_gain"}
    adam = TrainConfig(data="digits", rule="hsp", optimizer="adam")
    assert "feedback_gain" not in default_space(adam).names()
    assert "lr" not in default_space(hsp, fixed=frozenset({"lr"})).names()  # --lr given: fixed, not searched
    with pytest.raises(HeterogradError, match="cancels c"):
        space_from_mapping({"feedback_gain": {"low": 0.1, "high": 2}}, adam)
    # a categorical optimiser: c is drawn in the momentum trials only
    space = space_from_mapping(
        {"optimizer": {"choices": ["adam", "momentum"]}, "lr": {"low": 1e-4, "high": 0.1, "log": True},
         "momentum": {"low": 0.5, "high": 0.99}, "feedback_gain": {"low": 0.1, "high": 2}},
        hsp,
    )  # fmt: skip
    drawn = space.sample(optuna.trial.FixedTrial({"optimizer": "adam", "lr": 1e-3}), hsp)
    assert drawn == {"optimizer": "adam", "lr": 1e-3}
    fixed = {"optimizer": "momentum", "lr": 1e-3, "momentum": 0.9, "feedback_gain": 0.5}
    assert space.sample(optuna.trial.FixedTrial(fixed), hsp) == fixed


@pytest.mark.parametrize(
    ("extra", "space_text", "needle"),
    [
        (["--n-trials", "-1"], None, "--n-trials must be an integer >= 0"),
        (["--n-test", "100"], None, "--n-test does not apply to tune"),
        (["--resume", "x"], None, "--resume does not apply to tune"),
        (["--val-size", "480"], None, "--val-size must be between 1 and 479"),
        (["--storage", "nosuch://x"], None, "--storage nosuch://x"),
        (["--optimizer", "adam"], "feedback_gain = {low = 0.1, high = 2.0}\n", "cancels c"),
        ([], "epochs = {low = 1, high = 3}\n", "'epochs' is not a hyperparameter a study searches"),
        ([], "lr = {low = 1, high = 0.1}\n", "lr needs low < high"),
        ([], "lrr = 0.1\n", "unknown hyperparameter 'lrr'"),
        (["--lr", "0.1"], "lr = {low = 1e-3, high = 0.1, log = true}\n", "--lr fixed on the command line but searched"),
        ([], "lr = [", "not valid TOML"),
    ],
)
def test_bad_input_one_line(capsys, tmp_path, extra, space_text, needle):
    argv = ["tune", *SMALL, "--out", str(tmp_path / "s"), *extra]
    if space_text is not None:
        (tmp_path / "space.toml").write_text(space_text)
        argv += ["--space", str(tmp_path / "space.toml")]
    code, _, err = run_cli(capsys, *argv)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_two_workers_share_one_study(tmp_path):
    journal = tmp_path / "study.log"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heterograd",
                "tune",
                *SMALL,
                "--n-trials",
                "2",
                "--startup-trials",
                "1",
                "--storage",
                f"journal:{journal}",
                "--sampler-seed",
                str(k),
                "--out",
                str(tmp_path / f"w{k}"),
                "--no-progress",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    storage = study_module.open_storage(f"journal:{journal}")
    trials = optuna.load_study(study_name="circuit-digits-hsp", storage=storage).get_trials()
    assert len(trials) == 4  # both workers' trials, each once
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.params["lr"] for t in trials}) == 4  # no configuration run twice


def test_feedback_gain_with_adam_warns_once(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "--data", "digits", "--rule", "hsp", "--hidden", "16", "--n-train", "64", "--epochs", "1",
        "--optimizer", "adam", "--lr", "1e-3", "--feedback-gain", "0.5", "--no-progress", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "cancels the feedback gain" in warnings[0]
    code, _, err = run_cli(
        capsys, "train", "--data", "digits", "--rule", "hsp", "--hidden", "16", "--n-train", "64", "--epochs", "1",
        "--optimizer", "momentum", "--feedback-gain", "0.5", "--no-progress", "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 0 and "warning" not in err
    assert not math.isnan(json.loads((tmp_path / "m" / "summary.json").read_text())["test_loss"])


@pytest.mark.slow
def test_done_check_of_issue_19(capsys, tmp_path):
    out = tmp_path / "DIR"
    argv = ["tune", "--data", "digits", "--rule", "hsp", "--n-trials", "8", "--epochs", "2", "--out", str(out)]
    assert run_cli(capsys, *argv)[0] == 0
    assert len(rows(out / "trials.csv")) >= 8
    assert all((out / f).exists() for f in ("best.json", "history.png", "params.png"))
    assert run_cli(capsys, "train", "--config", str(out / "best.json"), "--out", str(tmp_path / "OTHER"))[0] == 0
    assert run_cli(capsys, *argv)[0] == 0
    assert len(rows(out / "trials.csv")) >= 16


@pytest.mark.parametrize(("optimizer", "cancels"), [("adam", True), ("rmsprop", True), ("momentum", False)])
def test_adaptive_optimisers_cancel_the_gain(optimizer, cancels):
    from heterograd.train import Trainer

    def feedback(c: float) -> list[torch.Tensor]:
        cfg = TrainConfig(data="digits", rule="hsp", hidden=(16,), n_train=128, epochs=1, lr=1e-3, probes=False,
                          optimizer=optimizer, feedback_gain=c, weight_decay=0.0)  # fmt: skip
        tr = Trainer(cfg)
        start = [b.detach().clone() for b in tr.circuit.B]
        tr.fit(None, progress=False)
        return [b.detach() - s for b, s in zip(tr.circuit.B, start, strict=True)]

    half, one = feedback(0.5), feedback(1.0)
    for a, b in zip(half, one, strict=True):
        assert float(b.norm()) > 1e-3
        same = torch.allclose(a, b, rtol=1e-3, atol=1e-6 * float(b.abs().max()))
        assert same == cancels


def test_ctrl_c_keeps_every_finished_trial(tmp_path, monkeypatch):
    real, calls = study_module.make_trainer, []

    def interrupted_third(cfg, dataset=None):
        calls.append(cfg)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, dataset)

    monkeypatch.setattr(study_module, "make_trainer", interrupted_third)
    base = TrainConfig(data="digits", rule="fa", hidden=(16,), n_train=300, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run_study(base, default_space(base), StudyOptions(n_trials=5), tmp_path)
    states = [r["state"] for r in rows(tmp_path / "trials.csv")]  # written on the way out
    assert states == ["COMPLETE", "COMPLETE", "FAIL"] and (tmp_path / "best.json").exists()
    monkeypatch.setattr(study_module, "make_trainer", real)
    res = run_study(base, default_space(base), StudyOptions(n_trials=1), tmp_path)  # the same study continues
    assert res.summary["states"]["complete"] == 3 and res.summary["trials"] == 4
