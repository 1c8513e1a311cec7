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


# ---------------------------------------------------------------------------------------------------------
# Tests that need a real data set: skipped when it is absent, a failure under HETEROGRAD_REQUIRE_DATA=1


def test_a_missing_data_set_skips_with_one_line_or_fails_when_required(monkeypatch, tmp_path):
    from conftest import REQUIRE_DATA_ENV, require_data

    from heterograd.data import sources

    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.delenv(REQUIRE_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_data("fashion-mnist")
    reason = str(skipped.value)
    assert "\n" not in reason and "not installed" in reason and "apt-get install dataset-fashion-mnist" in reason
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="HETEROGRAD_REQUIRE_DATA is set"):
        require_data("fashion-mnist")
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path)  # present: nothing happens
    require_data("fashion-mnist")


def test_every_test_that_reads_fashion_mnist_is_marked():
    """A test that loads the real Fashion-MNIST must carry ``needs_data`` (or patch the folder away itself)."""
    import ast
    from pathlib import Path

    unmarked = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            body = ast.get_source_segment(source, node) or ""
            decorators = " ".join(ast.unparse(d) for d in node.decorator_list)
            reads = any(
                isinstance(n, ast.Constant) and n.value in ("fashion-mnist", "fashion_mnist") for n in ast.walk(node)
            )
            if reads and "needs_data" not in decorators and "FASHION_MNIST_DIR" not in body:
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, f"add @pytest.mark.needs_data('fashion-mnist') to: {unmarked}"
