"""The committed outputs of ``examples/`` reproduce from the commands shown next to them, at the committed thread
count (one thread). The default suite reruns the small committed references; ``-m slow`` the full ones.

Tolerances absorb last-digit float noise only: accuracies 0.005, losses 1% relative, phi and DC 0.02.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "convert"
needs_fashion = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST is not installed"
)


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=3000,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _sorting_rows(text: str) -> dict[str, tuple[float, float]]:
    rows = re.findall(r"^(\S+)\s+token acc ([\d.]+)\s+sequences sorted ([\d.]+)", text, flags=re.M)
    return {rule: (float(tok), float(seq)) for rule, tok, seq in rows}


def _check_sorting(committed: Path, *args: str) -> None:
    want = _sorting_rows(committed.read_text(encoding="utf-8"))
    assert want, f"{committed} holds no result rows"
    got = _sorting_rows(_run("transformer_sorting.py", *args))
    assert got.keys() == want.keys()
    for rule, (tok, seq) in want.items():
        assert got[rule][0] == pytest.approx(tok, abs=0.005), (rule, got[rule], (tok, seq))
        assert got[rule][1] == pytest.approx(seq, abs=0.005), (rule, got[rule], (tok, seq))


def _check_fashion(committed: Path, tmp_path: Path) -> None:
    want: dict[str, Any] = json.loads(committed.read_text(encoding="utf-8"))
    a = want["args"]
    out = tmp_path / "rerun.json"
    args = ["--rules", a["rules"], "--n-train", str(a["n_train"]), "--n-test", str(a["n_test"])]
    args += ["--epochs", str(a["epochs"]), "--batch", str(a["batch"]), "--lr", str(a["lr"])]
    args += ["--weight-decay", str(a["weight_decay"]), "--seed", str(a["seed"]), "--threads", str(a["threads"])]
    _run("convert_fashion_mnist.py", *args, "--out", str(out))
    got = {r["rule"]: r for r in json.loads(out.read_text(encoding="utf-8"))["results"]}
    assert list(got) == [r["rule"] for r in want["results"]]
    for w in want["results"]:
        g = got[w["rule"]]
        assert g["test_acc"] == pytest.approx(w["test_acc"], abs=0.005), (w["rule"], g["test_acc"], w["test_acc"])
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=0.01), w["rule"]
        for layer, phi in w.get("phi", {}).items():
            assert g["phi"][layer] == pytest.approx(phi, abs=0.02), (w["rule"], layer)
        if "dc_score" in w:
            assert g["dc_score"] == pytest.approx(w["dc_score"], abs=0.02), w["rule"]


def test_transformer_sorting_small_reference_reproduces() -> None:
    """docs/convert/transformer_sorting_small.txt: ``--steps 60 --rules kp,hsp``."""
    _check_sorting(DOCS / "transformer_sorting_small.txt", "--steps", "60", "--rules", "kp,hsp")


@needs_fashion
def test_convert_fashion_mnist_small_reference_reproduces(tmp_path: Path) -> None:
    """docs/convert/fashion_mnist_small.json: 2,000 training images, rules autograd, bp, hsp, fa, dfa."""
    _check_fashion(DOCS / "fashion_mnist_small.json", tmp_path)


@pytest.mark.slow
def test_transformer_sorting_committed_numbers_reproduce() -> None:
    """docs/convert/transformer_sorting.txt: ``python examples/transformer_sorting.py`` (the README's numbers)."""
    _check_sorting(DOCS / "transformer_sorting.txt")


@pytest.mark.slow
@needs_fashion
def test_convert_fashion_mnist_committed_numbers_reproduce(tmp_path: Path) -> None:
    """docs/convert/fashion_mnist.json: ``python examples/convert_fashion_mnist.py --threads 1`` (the README's)."""
    _check_fashion(DOCS / "fashion_mnist.json", tmp_path)
