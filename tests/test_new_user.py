"""Issue 24: what a new user hit with their own models. One test (or more) per numbered item; each fails
without its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import heterograd
from heterograd import HeterogradError, TrainConfig, Trainer, TrainingInterrupted
from heterograd.cli import main
from heterograd.data import Dataset, load_dataset
from heterograd.nn import convert, plastic_layers
from heterograd.rules import make_rule
from heterograd.train_module import ModuleTrainer

ROOT = Path(__file__).resolve().parents[1]

USER_MODEL = '''
import math

import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """An MLP with LayerNorm and Dropout; misuse=True calls fc1's weight outside its module."""

    def __init__(self, d, width, k, misuse):
        super().__init__()
        self.fc1, self.ln = nn.Linear(d, width), nn.LayerNorm(width)
        self.drop, self.fc2 = nn.Dropout(0.3), nn.Linear(width, k)
        self.misuse = misuse

    def forward(self, x):
        x = x.flatten(1)
        h = F.linear(x, self.fc1.weight, self.fc1.bias) if self.misuse else self.fc1(x)
        return self.fc2(self.drop(F.relu(self.ln(h))))


def build(in_shape, num_classes, outputs=0, misuse=False):
    return Net(math.prod(in_shape), 32, outputs or num_classes, misuse)
'''


@pytest.fixture
def user_model(tmp_path: Path) -> str:
    path = tmp_path / "mynet.py"
    path.write_text(USER_MODEL, encoding="utf-8")
    return f"{path}:build"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _small(user_model: str, **kw: object) -> TrainConfig:
    base: dict = dict(model=user_model, data="digits", rule="hsp", epochs=2, batch_size=32, n_train=256, n_test=128)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------- 1. dropout: reruns and resumes bit for bit
def test_dropout_model_reruns_bit_for_bit(user_model: str, digits: Dataset) -> None:
    runs = []
    for _ in range(2):
        torch.rand(7)  # the global RNG moves between runs, as anything else in the process may move it
        tr = ModuleTrainer(_small(user_model, probes=False), digits)
        res = tr.fit(None, progress=False)
        runs.append((res.summary, {k: v.clone() for k, v in tr.model.state_dict().items()}))
    (s1, w1), (s2, w2) = runs
    assert s1["test_loss"] == s2["test_loss"] and s1["final_train_loss"] == s2["final_train_loss"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_dropout_model_resumes_exactly(user_model: str, digits: Dataset, tmp_path: Path) -> None:
    cfg = dict(probes=False, log_every=3)
    ref = ModuleTrainer(_small(user_model, **cfg), digits)
    ref_res = ref.fit(tmp_path / "ref", progress=False)
    tr = ModuleTrainer(_small(user_model, **cfg), digits)

    def stop(row: dict) -> None:
        if row["step"] >= 9:  # mid-epoch (8 steps per epoch)
            tr._stop_signal = signal.SIGINT

    with pytest.raises(TrainingInterrupted):
        tr.fit(tmp_path / "run", progress=False, on_log=stop)
    torch.rand(11)
    resumed = ModuleTrainer.resume(tmp_path / "run", digits)
    res = resumed.fit(tmp_path / "run", progress=False)
    assert res.rows == ref_res.rows
    got, want = resumed.model.state_dict(), ref.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


# ---------------------------------------------------------------- 2. a plastic weight used outside its module
def test_plastic_weight_used_outside_its_module_is_an_error() -> None:
    import importlib.util

    spec = importlib.util.spec_from_loader("usermodel_i24", loader=None)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    exec(USER_MODEL, mod.__dict__)
    x, y = torch.randn(6, 8), torch.randint(0, 3, (6,))
    good = convert(mod.build((8,), 3), "fa", seed=0)
    F.cross_entropy(good(x), y).backward()  # used as modules: no error
    bad = convert(mod.build((8,), 3, misuse=True), "fa", seed=0)
    with pytest.raises(HeterogradError, match=r"plastic parameter 'fc1\.(weight|bias)'.*outside its module"):
        F.cross_entropy(bad(x), y).backward()
    with pytest.raises(HeterogradError, match="outside its module"):
        heterograd.probe(bad, x, y, F.cross_entropy)  # no more empty table and "DC nan"
    F.cross_entropy(good(x), y).backward()  # the guard's state was reset: the good model still trains


def test_cli_refuses_the_misused_weight_before_writing(capsys, tmp_path: Path, user_model: str) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--model", user_model, "--model-options", "misuse=true", "--rule", "fa", "--out", str(out)
    )
    assert code == 2 and "outside its module" in one_error_line(err)
    assert not out.exists()


# ---------------------------------------------------------------- 3 and 8. output width against the classes
@pytest.mark.parametrize("outputs", [12, 8])
def test_output_width_must_equal_the_classes(capsys, tmp_path: Path, user_model: str, outputs: int) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", user_model, "--model-options", f"outputs={outputs}", "--epochs", "1"]
    code, _, err = run_cli(capsys, *argv, "--out", str(out))
    line = one_error_line(err)
    assert code == 2 and f"outputs {outputs} logits" in line and "10 classes" in line
    assert not out.exists()  # nothing left that blocks the rerun
    code, _, _ = run_cli(capsys, "train", "--model", user_model, "--epochs", "1", "--n-train", "64", "--out", str(out))
    assert code == 0


# ---------------------------------------------------------------- 4. your own Dataset is recorded as such
def test_own_dataset_is_recorded_and_config_refuses_to_rerun_it(capsys, tmp_path: Path, digits: Dataset) -> None:
    import dataclasses

    mine = dataclasses.replace(digits, name="my-scans")
    res = heterograd.train(TrainConfig(epochs=1, n_train=64, probes=False), tmp_path / "run", dataset=mine)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["data"] == "python:my-scans" and res.summary["data"] == "python:my-scans"
    code, _, err = run_cli(
        capsys, "train", "--config", str(tmp_path / "run" / "config.json"), "--out", str(tmp_path / "b")
    )
    assert code == 2 and "passed in Python" in one_error_line(err)
    assert not (tmp_path / "b").exists()
    same = heterograd.train(TrainConfig(data="digits", epochs=1, n_train=64, probes=False), dataset=digits)
    assert same.summary["data"] == "digits"  # a preloaded built-in set keeps its name


# ---------------------------------------------------------------- 5. learning nothing is flagged, with its reason
def test_a_run_that_learns_nothing_is_flagged_with_its_criterion(digits: Dataset) -> None:
    stuck = Trainer(TrainConfig(lr=1e-9, epochs=1, n_train=256, probes=False), digits)
    s = stuck.fit(None, progress=False).summary
    assert not s["diverged"] and s["no_learning"] is not None
    assert s["no_learning"].startswith("test accuracy") and "at chance" in s["no_learning"]
    # the loss criterion, on the same trainer: a final loss above the untrained model's
    assert stuck.no_learning_reason(stuck.initial_test_loss + 1.0, 0.9).startswith("final test loss")  # type: ignore[operator]
    learned = Trainer(TrainConfig(epochs=2, n_train=512, probes=False), digits).fit(None, progress=False).summary
    assert learned["no_learning"] is None and learned["test_accuracy"] > 0.5


def test_the_untrained_loss_is_measured_on_an_evenly_spaced_subset_of_the_test_set() -> None:
    """At most 1024 test examples, every k-th: an unbiased estimate at a fraction of a full pass."""
    from heterograd.train import INITIAL_LOSS_EXAMPLES, evaluate

    ds = load_dataset("teacher", n_train=64, n_test=3000)
    tr = Trainer(TrainConfig(data="teacher", epochs=1, probes=False), ds)
    every = 3  # ceil(3000 / 1024)
    sub = ds.x_test[::every]
    assert INITIAL_LOSS_EXAMPLES == 1024 and sub.shape[0] == 1000
    assert tr.untrained_test_loss() == evaluate(tr.circuit, tr.loss, sub, ds.y_test[::every])[0]
    assert tr.untrained_test_loss() != tr.evaluate_test()[0]  # not the full pass
    small = Trainer(
        TrainConfig(data="teacher", epochs=1, probes=False), load_dataset("teacher", n_train=64, n_test=500)
    )
    assert small.untrained_test_loss() == small.evaluate_test()[0]  # fewer than 1024: all of them
    tr.fit(None, progress=False)
    assert (
        tr.initial_test_loss is not None
        and tr.initial_test_loss
        == evaluate(
            Trainer(TrainConfig(data="teacher", epochs=1, probes=False), ds).circuit, tr.loss, sub, ds.y_test[::every]
        )[0]
    )  # the run recorded the same subset's loss before its first step


def test_cli_says_that_a_run_learned_nothing(capsys, tmp_path: Path) -> None:
    code, out, _ = run_cli(
        capsys,
        "train",
        "--lr",
        "1e-9",
        "--epochs",
        "1",
        "--n-train",
        "128",
        "--no-probes",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0 and "learned nothing" in out and "(no learning)" in out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["no_learning"]


# ---------------------------------------------------------------- 6. hsp is not kp by default
def test_hsp_default_gain_is_half_everywhere_and_kp_is_one() -> None:
    assert make_rule("hsp").feedback_gain == 0.5 and make_rule("kp").feedback_gain == 1.0
    assert TrainConfig(rule="hsp").validate().feedback_gain == 0.5
    assert TrainConfig(rule="kp").validate().feedback_gain == 1.0
    model = convert(nn.Sequential(nn.Linear(4, 3)), "hsp")
    rule = plastic_layers(model)[0][1].plasticity.rule  # type: ignore[union-attr]
    assert rule.feedback_gain == 0.5 and rule.weight_decay == 1e-4


# ---------------------------------------------------------------- 7. a --model run records what applies
def test_model_run_records_circuit_options_as_null_and_reruns(capsys, tmp_path: Path, user_model: str) -> None:
    out = tmp_path / "a"
    code, _, _ = run_cli(capsys, "train", "--model", user_model, "--epochs", "1", "--n-train", "64", "--out", str(out))
    assert code == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["hidden"] is None and recorded["activation"] is None and recorded["topology"] is None
    code, _, _ = run_cli(capsys, "train", "--config", str(out / "config.json"), "--out", str(tmp_path / "b"))
    assert code == 0
    assert (
        json.loads((tmp_path / "b" / "summary.json").read_text())["test_loss"]
        == json.loads((out / "summary.json").read_text())["test_loss"]
    )


def test_mlp_width_in_two_places_is_an_error(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        "mlp",
        "--model-options",
        "hidden=64",
        "--hidden",
        "32",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "--hidden" in one_error_line(err)
    cfg = TrainConfig(model="mlp", hidden=(32,), epochs=1).validate()
    assert cfg.to_dict()["hidden"] == [32] and cfg.to_dict()["topology"] is None


# ---------------------------------------------------------------- 9. transformer options are checked
@pytest.mark.parametrize(
    ("options", "needle"), [("dim=abc", "must be an integer"), ("dim=30,heads=4", "multiple of heads")]
)
def test_transformer_options_are_one_line(capsys, tmp_path: Path, options: str, needle: str) -> None:
    argv = ["train", "--model", "transformer", "--data", "sorting", "--model-options", options]
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "r"))
    assert code == 2 and needle in one_error_line(err)


# ---------------------------------------------------------------- 10. Ctrl-C during start-up
def test_ctrl_c_during_startup_is_one_line_and_130(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "heterograd", "train", "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.3)  # still importing torch
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip() == "interrupted during start-up; nothing was run"
    assert not (tmp_path / "r").exists()


def test_running_as_cli_detection() -> None:
    from heterograd._startup import running_as_cli

    assert running_as_cli(["python", "-m", "heterograd", "train"])
    assert running_as_cli(["/venv/bin/python", "/venv/bin/heterograd", "train"])
    assert not running_as_cli(["python", "-m", "pytest", "tests"])
    assert not running_as_cli(["python", "script.py"])


def test_ctrl_c_after_the_folder_is_created(capsys, tmp_path: Path, monkeypatch) -> None:
    """The signal arrives after config.json was written, before the first step: one line, 130, no folder."""

    def interrupted(self: Trainer, *args: object, **kwargs: object) -> tuple[float, float]:
        assert (tmp_path / "r" / "config.json").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "evaluate_test", interrupted)
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert code == 130 and "before training started" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 11. torchrun without --distributed
def test_torchrun_without_distributed_is_refused(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert code == 2 and "pass --distributed" in one_error_line(err)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 12. one weight decay; lr per optimiser
def test_one_weight_decay_default_and_per_optimiser_step_sizes() -> None:
    model = convert(nn.Sequential(nn.Linear(4, 3)), "fa")
    assert plastic_layers(model)[0][1].plasticity.rule.weight_decay == TrainConfig(rule="fa").validate().weight_decay  # type: ignore[union-attr]
    assert TrainConfig(rule="fa").validate().weight_decay == 1e-4
    assert TrainConfig().validate().lr == 0.05
    assert TrainConfig(optimizer="adam").validate().lr == 1e-3
    assert TrainConfig(optimizer="adamw").validate().lr == 1e-3
    assert TrainConfig(optimizer="adam", lr=0.01).validate().lr == 0.01


def test_help_shows_the_defaults(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping or cut help texts
    code, out, _ = run_cli(capsys, "train", "--help")
    text = " ".join(out.split()).replace("│", "")
    text = " ".join(text.split())
    assert code == 0
    assert "1e-3 for rmsprop, adam and adamw" in text and "default 1e-4" in text
    assert "freeze" in text and "0.5 for hsp" in text  # 14: --rule lists freeze, --feedback-gain names its rules
    assert "<bool>" not in out  # 14: flags take no value


# ---------------------------------------------------------------- 13. repro names its experiments
def test_repro_lists_experiments_and_refuses_unknown_ones_first(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    from heterograd.experiments import EXPERIMENT_NAMES, load_all

    assert sorted(load_all()) == sorted(EXPERIMENT_NAMES)
    code, out, _ = run_cli(capsys, "repro", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0 and all(n in flat for n in EXPERIMENT_NAMES)
    code, out, err = run_cli(capsys, "repro", "foo")
    assert code == 2 and "unknown experiment 'foo'" in one_error_line(err) and "[repro]" not in out + err


# ---------------------------------------------------------------- 14. the leftover-folder error
def test_leftover_folder_suggests_resume_only_with_a_checkpoint(tmp_path: Path) -> None:
    from heterograd.results import prepare_run_dir

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HeterogradError) as info:
        prepare_run_dir(tmp_path)
    assert "--resume" not in str(info.value) and "--overwrite" in str(info.value)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(HeterogradError, match="--resume"):
        prepare_run_dir(tmp_path)


# ---------------------------------------------------------------- 15. the documented route for your own data
def test_the_own_data_page_runs(tmp_path: Path, monkeypatch) -> None:
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    assert "/usr/share/datasets/fashion-mnist" in text and "idx:" in text
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks and "ModuleTrainer" in blocks[0] and "dataset=" in blocks[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(textwrap.dedent(blocks[0]), "docs/data.md", "exec"), {"__name__": "docs_data"})
    recorded = json.loads((tmp_path / "runs" / "my-data" / "config.json").read_text())
    assert recorded["data"].startswith("python:")
