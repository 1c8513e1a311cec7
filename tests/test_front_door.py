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
        ["train", "--model", "mlp", "--hidden", "8", "--data", "digits", "--n-train", "64"],
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


def test_an_unmarked_test_that_reads_fashion_mnist_fails(monkeypatch, tmp_path):
    """conftest's guard: reading the real files without the marker is an error (so no test skips silently)."""
    from heterograd.data import load_dataset, sources

    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path)  # "installed": the loader gets to the files
    with pytest.raises(AssertionError, match="needs_data"):
        load_dataset("fashion-mnist")


# ---------------------------------------------------------------------------------------------------------
# Every README code block runs (at small sizes); docs/convert.md's code too


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def code_blocks(path, lang: str) -> list[str]:
    """The fenced ``lang`` code blocks of a markdown file, in order."""
    import re

    text = (ROOT / path).read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def shrink(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each replacement applied; every one must apply (so the test follows the page)."""
    for old, new in replacements.items():
        assert old in code, f"expected {old!r} in the code block; update the test with the page"
        code = code.replace(old, new)
    return code


def small_argv(line: str) -> list[str]:
    """A README ``heterograd ...`` line as argv at test size: 20x fewer epochs, tiny populations and data."""
    import shlex

    argv = shlex.split(line.split("  #")[0])[1:]
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--epochs":
            out += [a, str(max(1, int(next(it)) // 20))]
        elif a == "--n-trials":
            next(it)
            out += [a, "2"]
        elif a in ("--population", "--generations"):
            next(it)
            out += [a, "4" if a == "--population" else "1"]
        else:
            out.append(a)
    if out[:1] in (["train"], ["demo"], ["evolve"], ["repro"]):
        out.append("--no-progress")
    if out[:1] == ["tune"]:
        out += ["--n-train", "512", "--val-size", "128", "--no-progress"]
    if out[:1] == ["train"] and "--resume" not in out:
        out += ["--n-train", "256", "--n-test", "64"]
    if out[:1] == ["evolve"]:
        out += ["--steps", "5", "--n-train", "64"]
    if out[:1] == ["demo"]:
        out += ["--epochs", "1"]
    return out


def test_readme_install_lines_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [ln for block in code_blocks("README.md", "bash") for ln in block.splitlines() if ln.strip()]
    installs = [ln for ln in lines if ln.startswith(("python3.11 -m venv", "pip install", "python -m pytest"))]
    assert any(TORCH_CPU_INDEX in ln for ln in installs), "the CPU install must name PyTorch's CPU index"
    missing = [ln for ln in installs if ln not in ci and ln != 'pip install -e ".[dev]"']  # the GPU path: ranges
    assert not missing, f"README install lines that .ci/run does not run: {missing}"


def test_the_lock_pins_one_torch_cpu_wheel():
    import hashlib

    lock = (ROOT / "requirements-lock.txt").read_text(encoding="utf-8")
    block = lock.split("\ntorch==2.13.0 \\\n", 1)[1].split("\n    # via", 1)[0]
    hashes = [h.strip().removeprefix("--hash=sha256:").rstrip(" \\") for h in block.splitlines()]
    assert len(hashes) == 1, f"torch must have exactly one hash (the CPU wheel's), got {hashes}"
    assert not any(ln.startswith(("nvidia-", "triton")) for ln in lock.splitlines())
    wheel = __import__("pathlib").Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    if wheel.is_file():  # the wheel of the CPU index, where this machine keeps a copy
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == hashes[0]


def test_readme_python_block_runs(capsys):
    (code,) = code_blocks("README.md", "python")
    namespace: dict = {}
    exec(compile(shrink(code, {"range(5)": "range(1)"}), "README.md", "exec"), namespace)
    assert namespace["accuracy"] > 0.5  # one epoch of 8x8 digits: far above the 0.1 of chance
    assert "DC over channels" in capsys.readouterr().out


def test_docs_convert_code_runs(capsys):
    first, sequence = code_blocks("docs/convert.md", "python")
    assert first == code_blocks("README.md", "python")[0], "docs/convert.md shows the README's example"
    namespace: dict = {}
    exec(compile(shrink(sequence, {"range(300)": "range(3)"}), "docs/convert.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "blocks.0.attn.qkv" in out and "DC over channels" in out


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_readme_command_lines_run(capsys, tmp_path, monkeypatch):
    """Every line of the README's command-line block, in order, at test size (`repro hs --quick` is most of its
    ~40 s on one core, hence slow)."""
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in code_blocks("README.md", "bash") if "heterograd train" in b]
    assert len(blocks) == 1
    for line in [ln for ln in blocks[0].splitlines() if ln.strip()]:
        assert line.startswith("heterograd "), f"not a heterograd command: {line!r}"
        argv = small_argv(line)
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, f"{line}\n-> heterograd {' '.join(argv)}\n{err}"
    assert (tmp_path / "runs" / "hsp" / "summary.json").is_file() and (tmp_path / "results" / "repro").is_dir()


def test_readme_demo_and_gpu_check_lines_run(capsys, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    lines = [ln for b in code_blocks("README.md", "bash") for ln in b.splitlines()]
    assert "heterograd demo" in lines
    code, out, err = run_cli(capsys, *small_argv("heterograd demo"))
    assert code == 0 and "hsp" in out, err
    (check,) = [ln for ln in lines if ln.startswith('python -c "')]
    proc = subprocess.run([sys.executable, "-c", check[len('python -c "') : -1]], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith(__version__), proc.stderr


def test_docstrings_use_no_sphinx_roles():
    """The API pages render docstrings with mkdocstrings (markdown): Sphinx roles would show as raw text."""
    import re

    role = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`")
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "src").rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if role.search(line)
    ]
    assert not found, f"write `name` instead of :func:`name` (mkdocstrings renders markdown): {found[:10]}"


def test_browser_check_flags_broken_figures_and_raw_markers():
    """scripts/check_docs.py's verdict on a page (the browser part runs in CI: python scripts/check_docs.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
    assert spec is not None and spec.loader is not None
    check_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_docs)
    good = {"images": [["a.png", 640]], "text": "convert(model)\nBP | 13.01 (one seed)", "ids": ["x.convert"]}
    assert check_docs.check_page("p", good, 1, ("x.convert",)) == []
    for text in ("see :func:`convert`", "::: heterograd.nn", "--8<-- README.md", "| BP | 13.01 ± 0.00 |"):
        assert any("raw marker" in p for p in check_docs.check_page("p", {**good, "text": text}, 1, ()))
    broken = {**good, "images": [["a.png", 640], ["b.png", 0]]}
    assert any("did not load" in p for p in check_docs.check_page("p", broken, 1, ()))
    assert any("expected at least 3" in p for p in check_docs.check_page("p", good, 3, ()))
    assert any("does not show" in p for p in check_docs.check_page("p", good, 0, ("heterograd.nn.probe.probe",)))


def test_bench_blocks_hold_several_steps_however_slow_the_step():
    """On a loaded machine the calibrated block shrank to one step, and the step ratio scattered (issue 23)."""
    from heterograd.bench import BenchConfig, run_benchmark

    cfg = BenchConfig.quick(impls=("bp-autograd", "hsp"), block_seconds=1e-9, min_block_steps=4, memory=False)
    result = run_benchmark(cfg)
    assert all(r["steps_per_block"] >= 4 for r in result["results"])


def test_performance_page_rerun_table_is_generated_from_the_committed_json():
    """docs/performance.md's rerun table is `python -m heterograd.bench.epoch ...`'s output, not typed numbers."""
    import json

    from heterograd.bench.epoch import rerun_spread_markdown

    bench = ROOT / "docs" / "benchmarks"
    steps = [bench / "bench.json", *sorted((bench / "reruns").glob("bench-rerun-*.json"))]
    epochs = sorted(bench.glob("cli-epoch*.json"))
    expected = rerun_spread_markdown(
        [json.loads(p.read_text(encoding="utf-8")) for p in steps],
        [json.loads(p.read_text(encoding="utf-8")) for p in epochs],
    )
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    block = page.split("<!-- generated: perf-reruns -->\n")[1].split("<!-- /generated: perf-reruns -->")[0]
    assert block == expected, "regenerate: python -m heterograd.bench.epoch (command in docs/performance.md)"


def test_readme_is_short_and_its_links_resolve():
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    targets = {t for t in re.findall(r"\]\(([^)#\s]+)", text) if not t.startswith("http")}
    assert "docs/reproduction/hs/hs_phi.png" in targets  # the picture comes from a committed run
    assert not [t for t in sorted(targets) if not (ROOT / t).exists()]
    claims = text.split("<!-- generated: claims -->")[1].split("<!-- /generated: claims -->")[0]
    rows = [ln for ln in claims.splitlines() if ln.startswith("| `")]
    assert len(rows) >= 15 and all("](docs/reproduction/" in ln for ln in rows)  # every claim links to its report


def test_dataset_to_where_it_already_is_is_free(monkeypatch):
    """`Trainer` calls `Dataset.to(device, dtype)`: a no-op must not copy or re-validate the data (issue 23 item 6)."""
    import torch

    from heterograd.data import Dataset

    g = torch.Generator().manual_seed(0)
    ds = Dataset("toy", torch.randn(8, 3, generator=g), torch.arange(8) % 2, torch.randn(4, 3, generator=g),
                 torch.arange(4) % 2, 2)  # fmt: skip
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(t.shape) or real(t))
    assert ds.to(device="cpu", dtype=torch.float32) is ds and not calls
    moved = ds.to(dtype=torch.float64)
    assert moved is not ds and moved.x_train.dtype == torch.float64 and moved.y_train.dtype == torch.int64
