"""Validation of every user input: one clear line naming the problem and the fix, exit code 2 on the
CLI, no traceback; the Python API raises :class:`HeterogradError` with the same one-line messages."""

from __future__ import annotations

import gzip
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from heterograd import Circuit
from heterograd.cli import main
from heterograd.data import Dataset, load_dataset
from heterograd.errors import HeterogradError
from heterograd.train import TrainConfig, Trainer

TINY = ["train", "--data", "digits", "--n-train", "64", "--n-test", "16", "--hidden", "8", "--epochs", "1"]


def _idx(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _idx_dir(root: Path, n_train: int = 40, n_test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 3, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 3, n_test, dtype=np.uint8),
    }
    for name, arr in files.items():
        (root / name).write_bytes(_idx(arr))
    return root


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one ``error: ...`` line on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exc.value.code == 2, (argv, captured)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------- CLI
CLI_CASES: list[tuple[list[str], str]] = [
    (["--rule", "hebb"], "unknown rule 'hebb'; valid choices"),
    (["--activation", "gelu"], "unknown activation 'gelu'"),
    (["--topology", "ring"], "unknown topology 'ring'"),
    (["--feedback-init", "zero"], "unknown feedback init 'zero'"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--data", "cifar"], "unknown dataset 'cifar'"),
    (["--data", "mnist"], "pass idx:<dir>"),
    (["--hidden", "12,x"], "--hidden '12,x' is not a comma-separated list"),
    (["--hidden", "12,-3"], "--hidden widths must be positive integers"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--feedback-gain", "nan"], "--feedback-gain must be a finite number"),
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--density", "1.5"], "--density must be in (0, 1]"),
    (["--log-every", "-5"], "--log-every must be an integer >= 1, got -5"),
    (["--log-every", "0"], "--log-every must be an integer >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1"),
    (["--n-train", "0"], "--n-train must be an integer >= 1"),
    (["--n-train", "100000"], "n_train=100000 exceeds the 1437 train examples"),
    (["--n-test", "100000"], "n_test=100000 exceeds the 360 test examples"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--theta-w", "1,a"], "--theta-w must be comma-separated numbers"),
    (["--rule", "poly", "--theta-w", "1,2"], "theta"),
    (["--data", "teacher", "--loss", "ce"], "--loss ce needs a classification dataset"),
    (["--lr", "abc"], "Invalid value for '--lr'"),
    (["--epochs", "2.5"], "Invalid value for '--epochs'"),
    (["--no-such-option"], "No such option"),
]


@pytest.mark.parametrize(("extra", "message"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_rejects_bad_options(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error([*TINY, *extra], capsys)
    assert message in err, err


def test_cli_out_pointing_at_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "results.txt"
    f.write_text("not a folder")
    err = _cli_error([*TINY, "--out", str(f)], capsys)
    assert "exists and is not a folder" in err and "--out" in err
    assert f.read_text() == "not a folder"


def test_cli_out_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    err = _cli_error([*TINY, "--out", str(f / "run")], capsys)
    assert "cannot create output folder" in err


def _replace(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d


def _gz_only(d: Path) -> Path:
    (d / "train-images-idx3-ubyte").unlink()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(range(256)) * 8)[:200])
    return d


LABELS, IMAGES = "train-labels-idx1-ubyte", "train-images-idx3-ubyte"
IDX_FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing folder": (lambda d: d / "nowhere", "does not exist"),
    "folder is a file": (lambda d: d / LABELS, "is not a folder"),
    "missing file": (
        lambda d: _replace(d, "README", b"") if (d / "t10k-labels-idx1-ubyte").unlink() is None else d,
        "missing IDX file(s) t10k-labels",
    ),
    "truncated images": (lambda d: _replace(d, IMAGES, (d / IMAGES).read_bytes()[:-7]), "truncated IDX file"),
    "truncated header": (lambda d: _replace(d, LABELS, b"\x00\x00"), "truncated IDX file"),
    "wrong magic": (
        lambda d: _replace(d, LABELS, b"\x12\x34" + (d / LABELS).read_bytes()[2:]),
        "wrong magic number 12 34",
    ),
    "trailing bytes": (lambda d: _replace(d, LABELS, (d / LABELS).read_bytes() + b"junk"), "corrupt IDX file"),
    "count mismatch": (lambda d: _replace(d, LABELS, _idx(np.zeros(39, dtype=np.uint8))), "40 train images but 39"),
    "labels not 1-D": (lambda d: _replace(d, LABELS, _idx(np.zeros((40, 2), dtype=np.uint8))), "must be a 1-D integer"),
    "corrupt gzip": (_gz_only, "corrupt gzip file"),
    "test labels beyond train classes": (
        lambda d: _replace(d, "t10k-labels-idx1-ubyte", _idx(np.full(10, 7, dtype=np.uint8))),
        "test labels reach 7",
    ),
}


@pytest.mark.parametrize("fault", list(IDX_FAULTS))
def test_cli_rejects_bad_idx_data(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, message = IDX_FAULTS[fault]
    d = make(_idx_dir(tmp_path / "idx"))
    err = _cli_error(["train", "--data", f"idx:{d}", "--hidden", "4", "--epochs", "1", "--out", str(tmp_path)], capsys)
    assert message in err, err


def test_good_idx_folder_trains(tmp_path: Path) -> None:
    """The fault cases above start from a folder that does load and train."""
    d = _idx_dir(tmp_path / "idx")
    main(
        ["train", "--data", f"idx:{d}", "--hidden", "4", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]
    )
    assert (tmp_path / "r" / "summary.json").exists()


def test_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point maps user errors to one line + exit 2 (checked outside pytest's capture)."""
    for extra in (["--data", f"idx:{tmp_path}", "--lr", "0.1"],):
        proc = subprocess.run(
            [sys.executable, "-m", "heterograd.cli", *TINY, *extra],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=120,
        )
        assert proc.returncode == 2, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


# ---------------------------------------------------------------------------------------- Python API
BAD_CONFIGS: list[tuple[dict[str, object], str]] = [
    ({"lr": "abc"}, "--lr must be a finite number, got 'abc'"),
    ({"lr": [0.1]}, "--lr must be a finite number"),  # None is "not set": the optimiser's default
    ({"lr": True}, "--lr must be a finite number"),
    ({"lr": math.nan}, "--lr must be a finite number"),
    ({"epochs": 2.5}, "--epochs must be an integer >= 1, got 2.5"),
    ({"epochs": True}, "--epochs must be an integer"),
    ({"epochs": "3"}, "--epochs must be an integer"),
    ({"batch_size": -4}, "--batch-size must be an integer >= 1"),
    ({"seed": 1.5}, "--seed must be an integer"),
    ({"seed": 2**64}, "--seed must be < 2**63"),
    ({"hidden": 128}, "hidden must be a list of widths"),
    ({"hidden": (128, 0)}, "widths must be positive integers"),
    ({"hidden": (128, 2.5)}, "widths must be positive integers"),
    ({"rule": None}, "rule must be a name (str), got None"),
    ({"rule": ["hsp"]}, "rule must be a name (str)"),
    ({"activation": 3}, "activation must be a name"),
    ({"data": ""}, "data must be a dataset name"),
    ({"data": 5}, "data must be a dataset name"),
    ({"density": "0.5"}, "--density must be a finite number"),
    ({"density": -0.1}, "--density must be in (0, 1]"),
    ({"probes": "yes"}, "probes must be True or False"),
    ({"log_every": 0}, "--log-every must be an integer >= 1"),
    ({"n_train": -3}, "--n-train must be an integer >= 1"),
    ({"probe_size": 0}, "--probe-size must be an integer >= 1"),
    ({"divergence_threshold": 0.0}, "divergence_threshold must be > 0"),
    ({"theta_w": "1,2"}, "--theta-w must be a list of numbers"),
    ({"theta_w": [1, "x"]}, "--theta-w must be a list of numbers"),
    ({"theta_b": [1, math.inf]}, "--theta-b must hold finite numbers"),
    ({"optimizer_options": [1]}, "optimizer_options must be a dict"),
    ({"device": "cuda:3" if not torch.cuda.is_available() else "npu"}, "device"),
    ({"loss": 3}, "unknown loss 3"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_trainconfig_rejects(fields: dict[str, object], message: str) -> None:
    with pytest.raises(HeterogradError) as info:
        TrainConfig(**fields).validate()  # type: ignore[arg-type]
    assert message in str(info.value) and "\n" not in str(info.value)


def test_trainer_validates_before_loading_data() -> None:
    with pytest.raises(HeterogradError, match="unknown rule"):
        Trainer(TrainConfig(data="idx:/definitely/not/here", rule="nope"))


def test_dataset_with_nan_is_refused() -> None:
    ds = load_dataset("digits", n_train=50, n_test=20)
    x = ds.x_train.clone()
    x[[3, 7], 5] = math.nan
    with pytest.raises(HeterogradError, match=r"x_train holds NaN or infinite values in 2 rows \(first: row 3\)"):
        Dataset("mine", x, ds.y_train, ds.x_test, ds.y_test, 10)
    with pytest.raises(HeterogradError, match="y_test holds NaN"):
        Dataset("reg", ds.x_train, torch.zeros(50, 2), ds.x_test, torch.full((20, 2), math.inf), None)


def test_preloaded_dataset_honours_n_train() -> None:
    ds = load_dataset("digits", n_train=100, n_test=30)
    with pytest.raises(HeterogradError, match="n_train=500 exceeds the 100 examples"):
        Trainer(TrainConfig(n_train=500), ds)
    with pytest.raises(HeterogradError, match="must be a heterograd Dataset"):
        Trainer(TrainConfig(), {"x": 1})  # type: ignore[arg-type]
    t = Trainer(TrainConfig(n_train=40, n_test=10, hidden=(8,)), ds)
    assert t.data.x_train.shape == (40, 64) and t.data.x_test.shape == (10, 64)


BAD_CIRCUITS: list[tuple[tuple, dict[str, object], str]] = [
    ((5,), {}, "sizes must be a list of layer widths"),
    ((None,), {}, "sizes must be a list of layer widths"),
    (("64,10",), {}, "sizes must be a list of layer widths"),
    (([64],), {}, "at least an input and an output size"),
    (([64, 0, 10],), {}, "layer sizes must be positive integers"),
    (([64, -3, 10],), {}, "layer sizes must be positive integers"),
    (([64, 2.5, 10],), {}, "layer sizes must be positive integers"),
    (([64, True, 10],), {}, "layer sizes must be positive integers"),
    (([64, 10],), {"activation": "swish"}, "unknown activation 'swish'"),
    (([64, 10],), {"activation": ["tanh"]}, "unknown activation"),
    (([64, 10],), {"output_activation": "softmax"}, "unknown activation 'softmax'"),
    (([64, 8, 10],), {"topology": "ring"}, "unknown topology 'ring'"),
    (([64, 8, 10],), {"density": 0.0}, "density must be in (0, 1]"),
    (([64, 8, 10],), {"density": "dense"}, "density must be a number"),
    (([64, 8, 10],), {"feedback_init": "zeros"}, "unknown feedback init 'zeros'"),
    (([64, 10],), {"seed": "zero"}, "seed must be an integer"),
    (([64, 10],), {"dtype": torch.int32}, "dtype must be a floating torch.dtype"),
    (([64, 10],), {"dtype": "float32"}, "dtype must be a floating torch.dtype"),
    (([64, 10],), {"device": "nodevice"}, "device 'nodevice' is not usable here"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_CIRCUITS, ids=[str(c[:2]) for c in BAD_CIRCUITS])
def test_circuit_rejects(args: tuple, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(HeterogradError) as info:
        Circuit(*args, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value) and "\n" not in str(info.value)


def test_circuit_input_shape_mismatch() -> None:
    c = Circuit([6, 4, 3])
    with pytest.raises(HeterogradError, match=r"expects \(batch, 6\)"):
        c(torch.zeros(2, 5))
    with pytest.raises(HeterogradError, match=r"expects \(batch, 6\)"):
        c(torch.zeros(6))
    assert Circuit(np.array([6, 4, 3]).tolist()).sizes == (6, 4, 3)
    assert Circuit([np.int64(6), np.int64(3)]).sizes == (6, 3)
