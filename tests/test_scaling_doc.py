"""docs/scaling.md's cost table is the rendering of the committed benchmark JSON (no number typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heterograd.bench.scaling import END, START, main, scaling_table, write_into
from heterograd.errors import HeterogradError

ROOT = Path(__file__).resolve().parents[1]


def test_the_doc_holds_the_rendered_table():
    doc = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    between = doc.split(START, 1)[1].split(END, 1)[0].strip()
    source = between.splitlines()[0].split("`")[1]  # the JSON the table was rendered from (a GPU's, later)
    assert source.startswith("docs/benchmarks/") and (ROOT / source).is_file()
    table = scaling_table(ROOT / source).replace(str(ROOT) + "/", "")
    assert between == table, f"rerun: python -m heterograd.bench.scaling {source} --write docs/scaling.md"
    assert "scaling.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_a_changed_ratio_changes_the_table(tmp_path):
    data = json.loads((ROOT / "docs" / "benchmarks" / "bench-convnets.json").read_text(encoding="utf-8"))
    for r in data["results"]:
        if r["model"] == "resnet20" and r["impl"] == "kp":
            r["ratio_to_bp"] = 1.5
    p = tmp_path / "b.json"
    p.write_text(json.dumps(data))
    table = scaling_table(p)
    assert "| kp | 1.50 (on resnet20)" in table and "at most 1.50x" in table
    doc = tmp_path / "d.md"
    doc.write_text(f"head\n{START}\nold\n{END}\ntail\n")
    write_into(doc, table)
    assert doc.read_text().startswith("head\n") and "1.50" in doc.read_text() and doc.read_text().endswith("tail\n")


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    with pytest.raises(HeterogradError, match="cannot read the benchmark"):
        scaling_table(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text(json.dumps({"results": []}))
    with pytest.raises(HeterogradError, match="no kp row for resnet20"):
        scaling_table(tmp_path / "empty.json")
    (tmp_path / "d.md").write_text("no markers")
    with pytest.raises(HeterogradError, match="markers"):
        write_into(tmp_path / "d.md", "x")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.json")])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: cannot read")
