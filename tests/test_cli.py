"""The CLI contract of issue 2: files written, one-line errors, divergence as a result."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from heterograd.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--data", "nope"], "unknown dataset 'nope'"),
        (["train", "--rule", "nope"], "unknown rule 'nope'; valid choices: bp, brsf, dfa, fa"),
        (["train", "--topology", "ring"], "unknown topology 'ring'; valid choices: amorphous, direct, layered, sparse"),
        (["train", "--feedback-init", "zero"], "unknown feedback init 'zero'; valid choices: anti, random, transpose"),
        (["train", "--activation", "gelu"], "unknown activation 'gelu'; valid choices"),
        (["train", "--hidden", "128,x"], "--hidden '128,x' is not a comma-separated list of widths"),
        (["train", "--hidden", "128,-4"], "--hidden widths must be positive integers"),
        (["train", "--density", "0"], "--density must be in (0, 1]"),
        (["train", "--lr", "-1"], "--lr must be a positive number"),
        (["train", "--epochs", "0"], "--epochs must be"),
        (["train", "--data", "idx:/nonexistent/folder"], "/nonexistent/folder"),
        (["train", "--loss", "hinge"], "unknown loss 'hinge'; valid choices: ce, mse"),
        (["train", "--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(capsys, tmp_path, argv, needle):
    code, _out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "run"))
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_missing_idx_folder_names_the_fix(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", f"idx:{tmp_path}/missing", "--out", str(tmp_path / "r"))
    assert code == 2 and "missing" in err and "idx:" in err


def test_train_writes_the_run_directory(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--data",
        "digits",
        "--rule",
        "hsp",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
        "--hidden",
        "32,32",
        "--no-progress",
    )
    assert code == 0
    for name in ("config.json", "metrics.csv", "summary.json", "loss.png", "probes.png"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rule"] == "hsp" and cfg["hidden"] == [32, 32] and cfg["loss"] == "ce"
    assert {"heterograd", "torch", "python"} <= set(cfg["environment"])
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "test_accuracy",
        "test_loss",
        "final_train_loss",
        "diverged",
        "phi",
        "align",
        "dc_score",
        "wall_seconds",
    ):
        assert key in s
    assert s["diverged"] is False and len(s["phi"]) == 2 and len(s["align"]) == 2
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and {"step", "epoch", "train_loss", "phi_1", "align_1", "phi_2", "align_2"} <= set(rows[0])
    assert "hsp on digits" in stdout


def test_regression_summary_has_null_accuracy(capsys, tmp_path):
    code, _, _ = run_cli(
        capsys, "train", "--data", "teacher", "--epochs", "1", "--hidden", "16", "--out", str(tmp_path), "--no-progress"
    )
    assert code == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["test_accuracy"] is None and s["test_loss"] is not None


def test_divergence_is_a_result_not_a_crash(capsys, tmp_path):
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--lr",
        "500",
        "--epochs",
        "3",
        "--hidden",
        "32,32",
        "--activation",
        "relu",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    assert code == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["diverged"] is True and s["diverged_step"] is not None
    assert "diverged" in stdout
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "loss.png").is_file()


def test_demo_runs_and_prints_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "heterograd", "demo", "--out", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for rule in ("bp", "fa", "hsp"):
        assert rule in proc.stdout
        assert (tmp_path / rule / "summary.json").is_file()
        assert (tmp_path / rule / "probes.png").is_file()
    assert "test acc" in proc.stdout and "DC" in proc.stdout
    runs = json.loads((tmp_path / "demo.json").read_text())["runs"]
    acc = {r["rule"]: r["test_accuracy"] for r in runs}
    assert acc["hsp"] >= acc["bp"] - 0.02 and min(acc.values()) > 0.9


def test_demo_runs_twice_in_one_folder_and_replaces_only_its_own_output(capsys, tmp_path):
    """The quick start's `heterograd demo`, run again in the same folder: exit 0 both times (issue 23)."""
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "1", "--no-progress"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    first = json.loads((out / "hsp" / "summary.json").read_text())
    (out / "notes.txt").write_text("mine")  # a user's file next to the demo's output
    (out / "hsp" / "stale.txt").write_text("left by the first run")
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    again = json.loads((out / "hsp" / "summary.json").read_text())
    assert "hsp" in stdout and again.pop("wall_seconds") and first.pop("wall_seconds")
    assert again == first  # same seed, same result
    assert not (out / "hsp" / "stale.txt").exists()  # the old run was replaced, not mixed with the new one
    assert (out / "notes.txt").read_text() == "mine"
    marker = json.loads((out / ".heterograd-demo.json").read_text())
    assert marker["entries"] == ["bp", "fa", "hsp", "demo.json", "demo.md"]


def test_demo_refuses_a_folder_it_did_not_write(capsys, tmp_path):
    (tmp_path / "thesis.tex").write_text("do not touch")
    (tmp_path / "hsp").mkdir()
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path), "--epochs", "1", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "did not write" in err and "choose a new or empty --out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hsp", "thesis.tex"]
    # --overwrite does not make a foreign folder the demo's either
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path), "--epochs", "1", "--overwrite", "--no-progress")
    assert code == 2 and (tmp_path / "thesis.tex").read_text() == "do not touch"


def test_prepare_owned_dir_claims_replaces_and_refuses(tmp_path):
    from heterograd.errors import HeterogradError
    from heterograd.results import prepare_owned_dir

    out = tmp_path / "o"
    prepare_owned_dir(out, "x", ["a", "b.txt"])
    (out / "a").mkdir()
    (out / "a" / "f").write_text("1")
    (out / "b.txt").write_text("2")
    (out / "c.txt").write_text("user")
    prepare_owned_dir(out, "x", ["a", "b.txt"])
    assert sorted(p.name for p in out.iterdir()) == [".heterograd-x.json", "c.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.txt").write_text("not ours")
    with pytest.raises(HeterogradError, match="did not write"):
        prepare_owned_dir(other, "x", ["a", "b.txt"])
    assert (other / "b.txt").read_text() == "not ours"
    with pytest.raises(ValueError):
        prepare_owned_dir(tmp_path / "p", "x", ["../escape"])


def test_python_dash_m_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "heterograd", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train" in proc.stdout and "demo" in proc.stdout
