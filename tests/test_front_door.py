"""Issue 23, the front door: the version on the command line and in every run folder."""

from __future__ import annotations

import json

import pytest

from heterograd import __version__
from heterograd.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_version_option_prints_the_package_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"heterograd {__version__}" and not err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "digits", "--epochs", "1", "--n-train", "64", "--n-test", "32", "--hidden", "8"],
        ["train", "--model", "mlp", "--model-options", "hidden=8", "--data", "digits", "--n-train", "64"],
        ["evolve", "--population", "4", "--generations", "1", "--steps", "5", "--n-train", "64"],
    ],
    ids=["train", "train-model", "evolve"],
)
def test_every_run_folder_records_the_version(capsys, tmp_path, argv):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *argv, "--no-progress", "--out", str(out))
    assert code == 0, err
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["environment"]["heterograd"] == __version__
