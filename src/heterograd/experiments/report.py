"""``report.md`` for ``heterograd repro all``: a verdict table and every figure embedded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import atomic_write_text


def _short(measured: dict[str, Any], limit: int = 6) -> str:
    items = []
    for k, v in list(measured.items())[:limit]:
        if isinstance(v, float):
            items.append(f"{k}={v:.3g}")
        elif isinstance(v, int | bool | str):
            items.append(f"{k}={v}")
    return ", ".join(items)


def write_report(summaries: Sequence[dict[str, Any]], out: Path, *, quick: bool) -> Path:
    """Write ``out/report.md`` from experiment summaries; returns its path."""
    lines = [
        "# heterograd reproduction report",
        "",
        f"Made by `heterograd repro all --out {out}{' --quick' if quick else ''}`. "
        "Each verdict is computed from the measured numbers against the stated threshold.",
        "",
        "| experiment | claim | verdict | key numbers | threshold | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        verdict = "holds" if s["holds"] else ("error" if "error" in s else "**does not hold**")
        lines.append(
            f"| `{s['name']}` | {s['claim']} | {verdict} | {_short(s.get('measured', {}))} | "
            f"{s.get('threshold', '')} | {s.get('seconds', '')} |"
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
        for fig in s.get("figures", []):
            lines += ["", f"![{s['name']}: {fig}]({s['name']}/{fig})"]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
