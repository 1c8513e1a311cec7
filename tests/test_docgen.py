"""Numbers in the docs come from committed JSON: ``heterograd repro docs [--check]`` (experiments/docgen.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heterograd.cli import main
from heterograd.errors import HeterogradError
from heterograd.experiments.docgen import GENERATORS, generate_docs, render

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_committed_docs_agree_with_their_json():
    """Every generated block of README.md and docs/ is what its committed JSON gives (else: `heterograd repro
    docs` and commit)."""
    results = generate_docs(ROOT, check=True)
    keys = {r.key for r in results}
    assert {"claims", "convnets-table", "value"} <= keys, keys
    stale = [f"{r.file.relative_to(ROOT)}:{r.line} {r.key} {r.args}" for r in results if not r.current]
    assert not stale, "docs disagree with the committed JSON; run `heterograd repro docs`: " + "; ".join(stale)


def _tree(tmp_path: Path, holds: bool = True, error: float = 9.77) -> Path:
    exp = tmp_path / "docs" / "reproduction" / "toy"
    exp.mkdir(parents=True, exist_ok=True)
    summary = {"name": "toy", "claim": "toys learn", "holds": holds, "measured": {"err": error}, "quick": False}
    (exp / "summary.json").write_text(json.dumps(summary))
    return tmp_path


PAGE = """# Page

<!-- generated: claims --><!-- /generated: claims -->

Error: <!-- generated: value toy measured.err .1f -->?<!-- /generated: value -->%.

```markdown
<!-- generated: value toy measured.err .1f -->an example, untouched<!-- /generated: value -->
```
"""


def test_check_fails_when_a_doc_and_its_json_disagree(tmp_path, capsys):
    root = _tree(tmp_path)
    page = root / "docs" / "page.md"
    page.write_text(PAGE)
    code, out, _ = run_cli(capsys, "repro", "docs", "--check", "--root", str(root))
    assert code == 1 and "STALE" in out and page.read_text() == PAGE  # --check writes nothing
    code, out, _ = run_cli(capsys, "repro", "docs", "--root", str(root))
    assert code == 0
    text = page.read_text()
    assert "Error: <!-- generated: value toy measured.err .1f -->9.8<!-- /generated: value -->%." in text
    assert "| `toy` | toys learn | holds | [report](reproduction/toy/summary.json) |" in text
    assert "an example, untouched" in text  # markers inside code are examples
    assert run_cli(capsys, "repro", "docs", "--check", "--root", str(root))[0] == 0
    # the committed JSON changes (a rerun): the old page no longer passes the check
    _tree(tmp_path, holds=False, error=12.0)
    code, out, _ = run_cli(capsys, "repro", "docs", "--check", "--root", str(root))
    assert code == 1 and out.count("STALE") == 2
    run_cli(capsys, "repro", "docs", "--root", str(root))
    text = page.read_text()
    assert "12.0<!-- /generated: value -->%" in text and "**does not hold**" in text


@pytest.mark.parametrize(
    ("page", "needle"),
    [
        ("<!-- generated: nope --><!-- /generated: nope -->", "no generator 'nope'"),
        ("<!-- generated: claims -->", "closing '<!-- /generated: KEY -->'"),
        ("<!-- generated: value toy measured.nope -->x<!-- /generated: value -->", "no key 'measured.nope'"),
        ("<!-- generated: value missing measured.err -->x<!-- /generated: value -->", "does not exist"),
        ("<!-- generated: claims extra --><!-- /generated: claims -->", "takes no arguments"),
    ],
)
def test_bad_blocks_are_one_line_errors(tmp_path, capsys, page, needle):
    root = _tree(tmp_path)
    (root / "docs" / "page.md").write_text(page)
    with pytest.raises(HeterogradError) as exc:
        generate_docs(root)
    assert needle in str(exc.value)
    code, _, err = run_cli(capsys, "repro", "docs", "--root", str(root))
    assert code == 2 and needle in err and "Traceback" not in err
    assert (root / "docs" / "page.md").read_text() == page  # nothing written on an error


def test_docs_options_apply_only_to_docs(capsys, tmp_path):
    code, _, err = run_cli(capsys, "repro", "hs", "--check", "--out", str(tmp_path))
    assert code == 2 and "apply only to `heterograd repro docs`" in err
    code, _, err = run_cli(capsys, "repro", "docs", "--quick", "--root", str(_tree(tmp_path)))
    assert code == 2 and "do not apply to `repro docs`" in err


ARGS = {"value": "convnets measured.lenet5.kp.runs", "bench": "bench-convnets.json", "hardware-table": "hardware"}


def test_every_generator_renders_the_committed_json():
    """Each registered generator runs on the committed files (a broken one cannot hide behind no use)."""
    for key in GENERATORS:
        args = f" {ARGS[key]}" if key in ARGS else ""
        text, res = render(f"<!-- generated: {key}{args} --><!-- /generated: {key} -->", ROOT / "docs" / "x.md", ROOT)
        assert res[0].key == key and ("|---|" in text or key == "value"), key
