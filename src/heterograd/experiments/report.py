"""``report.md`` for ``heterograd repro all``: a verdict table and every figure embedded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import HeterogradError
from ..results import atomic_write_text


def _scalars(prefix: str, value: Any, depth: int) -> list[str]:
    """``key=value`` strings for the scalars of a (nested) measured dict, depth-first."""
    if isinstance(value, bool | int | str):
        return [f"{prefix}={value}"]
    if isinstance(value, float):
        return [f"{prefix}={value:.3g}"]
    if isinstance(value, dict) and depth > 0:
        out: list[str] = []
        for k, v in value.items():
            out += _scalars(f"{prefix}.{k}" if prefix else str(k), v, depth - 1)
        return out
    return []


def _cell(text: Any) -> str:
    """Make ``text`` safe inside a markdown table cell (escape pipes, no newlines)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(measured: dict[str, Any], limit: int = 6) -> str:
    """The first ``limit`` scalar numbers of ``measured`` (nested dicts flattened to ``a.b.c``)."""
    return ", ".join(_scalars("", measured, 3)[:limit])


def collect_summaries(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each experiment in ``names`` found under ``out`` (in that order).

    Raises `HeterogradError` when none is there.
    """
    found = []
    for n in names:
        path = out / n / "summary.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    if not found:
        raise HeterogradError(
            f"no experiment summaries under {out}; run `heterograd repro NAME --out {out}` first "
            f"(NAME one of {', '.join(names)})"
        )
    return found


def write_report(summaries: Sequence[dict[str, Any]], out: Path, *, quick: bool, assembled: bool = False) -> Path:
    """Write ``out/report.md`` from experiment summaries; returns its path.

    ``assembled``: the summaries come from separate ``heterograd repro NAME`` runs into ``out`` (the report says
    so and lists the command of each), not from one ``repro all``.
    """
    if assembled:
        made = (
            f"Assembled by `heterograd repro report --out {out}` from the runs in this folder; each experiment was "
            f"run by `heterograd repro NAME --out {out}` (see its summary.json for its own settings and seconds)."
        )
    else:
        made = f"Made by `heterograd repro all --out {out}{' --quick' if quick else ''}`."
    lines = [
        "# heterograd reproduction report",
        "",
        made + " Each verdict is computed from the measured numbers against the stated threshold.",
        "",
        "| experiment | claim | verdict | key numbers | threshold | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        verdict = "holds" if s["holds"] else ("error" if "error" in s else "**does not hold**")
        lines.append(
            f"| `{s['name']}` | {_cell(s['claim'])} | {verdict} | {_cell(_short(s.get('measured', {})))} | "
            f"{_cell(s.get('threshold', ''))} | {s.get('seconds', '')} |"
        )
    for s in summaries:
        lines += ["", f"## {s['name']}", "", f"**Claim.** {s['claim']}", ""]
        lines += [
            f"**Threshold.** {s.get('threshold', '')}",
            "",
            f"**Verdict.** {'holds' if s['holds'] else 'does not hold'}",
        ]
        if s.get("notes"):
            lines += ["", f"**Notes.** {s['notes']}"]
        if "error" in s:
            lines += ["", f"**Error.** `{s['error']}`"]
        lines += ["", "```json", json.dumps(s.get("measured", {}), indent=1, default=str)[:4000], "```"]
        folder = out / s["name"]
        tables = sorted(p.name for p in folder.glob("*.md")) if folder.is_dir() else []
        for t in tables:
            lines += ["", f"Table: [{s['name']}/{t}]({s['name']}/{t})"]
        for fig in s.get("figures", []):
            lines += ["", f"![{s['name']}: {fig}]({s['name']}/{fig})"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
