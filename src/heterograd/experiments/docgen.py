"""Numbers in the docs come from committed results: ``heterograd repro docs [--check]``.

A markdown file marks a generated block with a pair of HTML comments (invisible on GitHub and the docs site)::

    <!-- generated: KEY -->
    ...text written by the command...
    <!-- /generated: KEY -->

``KEY`` names a generator registered here (`GENERATORS`); the opening marker may carry arguments after the
key (``<!-- generated: value reproduction/hs/summary.json measured.x .3f -->``), the closing one names the key
only. ``heterograd repro docs`` rewrites the text between every pair of markers in ``README.md`` and every
``docs/**/*.md`` under the repository root from the committed JSON (``docs/reproduction/*/summary.json``,
``docs/benchmarks/*.json``, ``docs/convert/*.json``); ``--check`` rewrites nothing and exits 1 naming each
block whose committed text differs from what the JSON gives (a test runs it on every commit).

A generator is a function ``(DocContext, args) -> str``; block generators return markdown that starts and ends
with a newline (so the markers stay on their own lines), inline ones (``value``) return the bare text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from os.path import relpath
from pathlib import Path
from typing import Any

from ..errors import HeterogradError
from ..results import atomic_write_text


@dataclass(frozen=True)
class DocContext:
    """Where a block is rendered: the repository ``root`` and the markdown ``file`` holding the block."""

    root: Path
    file: Path

    @property
    def docs(self) -> Path:
        """The ``docs/`` folder of the repository."""
        return self.root / "docs"

    def link(self, target: Path) -> str:
        """A relative link from `file` to ``target`` (forward slashes)."""
        return relpath(target, self.file.parent).replace("\\", "/")

    def load(self, rel: str) -> Any:
        """The JSON file ``docs/<rel>``; a clear error when it is missing or unreadable."""
        path = self.docs / rel
        if not path.is_file():
            raise HeterogradError(f"{self.file}: a generated block reads {path}, which does not exist; commit it")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HeterogradError(f"{path} is not valid JSON ({exc}); regenerate it") from None


Generator = Callable[[DocContext, list[str]], str]
#: generator name -> function; `generator` registers one.
GENERATORS: dict[str, Generator] = {}


def generator(name: str) -> Callable[[Generator], Generator]:
    """Register ``fn`` as the generator of ``<!-- generated: name -->`` blocks."""

    def deco(fn: Generator) -> Generator:
        GENERATORS[name] = fn
        return fn

    return deco


def _no_args(key: str, args: list[str]) -> None:
    if args:
        raise HeterogradError(f"generated block {key!r} takes no arguments, got {' '.join(args)!r}; drop them")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table as a block (leading and trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n" + "\n".join(lines) + "\n"


def _num(v: Any, fmt: str) -> str:
    """``v`` formatted by ``fmt``; ``-`` for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def dig(data: Any, dotted: str) -> Any:
    """``data["a"]["b"][0]`` for ``"a.b.0"``; a key that itself holds dots (``align_stuck_0.5``) is matched whole
    (the longest key that fits wins). A clear error when a part is missing."""
    parts = dotted.split(".")
    cur, i = data, 0
    while i < len(parts):
        if isinstance(cur, dict):
            for j in range(len(parts), i, -1):
                key = ".".join(parts[i:j])
                if key in cur:
                    cur, i = cur[key], j
                    break
            else:
                raise HeterogradError(f"no key {dotted!r} (stops at {parts[i]!r}); fix the generated block's key")
        elif isinstance(cur, list) and parts[i].lstrip("-").isdigit() and -len(cur) <= int(parts[i]) < len(cur):
            cur, i = cur[int(parts[i])], i + 1
        else:
            raise HeterogradError(f"no key {dotted!r} (stops at {parts[i]!r}); fix the generated block's key")
    return cur


# ---------------------------------------------------------------------------------------------- generators
@generator("value")
def value_block(ctx: DocContext, args: list[str]) -> str:
    """One number from a committed JSON file: ``value FILE KEY [FORMAT]``.

    ``FILE`` is a path under ``docs/``, or an experiment name for ``reproduction/NAME/summary.json``; ``KEY`` is
    dotted (``measured.lenet5.kp.std``, list items by index); ``FORMAT`` a Python format spec (``.2f``, ``,``).
    """
    if len(args) not in (2, 3):
        raise HeterogradError(f"generated value takes FILE KEY [FORMAT], got {' '.join(args)!r}")
    rel = args[0] if "/" in args[0] or args[0].endswith(".json") else f"reproduction/{args[0]}/summary.json"
    v = dig(ctx.load(rel), args[1])
    fmt = args[2] if len(args) == 3 else ""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return _num(v, fmt)


def _report_link(ctx: DocContext, folder: Path, name: str) -> Path:
    """The page that reports experiment ``name``: its folder's README.md or own .md, else the assembled report."""
    for cand in [folder / "README.md", folder / f"{name.replace('-', '_')}.md", *sorted(folder.glob("*.md"))]:
        if cand.is_file():
            return cand
    report = folder.parent / "report.md"
    if report.is_file() and f"## {name}\n" in report.read_text():
        return report
    return folder / "summary.json"


@generator("claims")
def claims_block(ctx: DocContext, args: list[str]) -> str:
    """The claims table: one row per committed ``docs/reproduction/NAME/summary.json`` with its verdict."""
    _no_args("claims", args)
    rows = []
    for path in sorted((ctx.docs / "reproduction").glob("*/summary.json")):
        s = json.loads(path.read_text())
        name = str(s.get("name", path.parent.name))
        verdict = "crashed" if "error" in s else "holds" if s.get("holds") else "**does not hold**"
        if s.get("quick"):
            verdict += " (quick run)"
        target = _report_link(ctx, path.parent, name)
        anchor = f"#{name}" if target.name == "report.md" else ""
        claim = str(s.get("claim", "")).replace("|", "\\|").replace("\n", " ")
        rows.append([f"`{name}`", claim, verdict, f"[report]({ctx.link(target)}{anchor})"])
    if not rows:
        raise HeterogradError(f"no docs/reproduction/*/summary.json under {ctx.root}; commit the runs first")
    return _table(["experiment", "claim", "verdict", "report"], rows)


def _rule_rows(table: dict[str, Any], labels: dict[str, str] | None = None) -> list[list[str]]:
    rows = []
    for rule, v in table.items():
        if not isinstance(v, dict) or "test_error_pct" not in v:
            continue
        err = v.get("test_error_pct")
        runs, div = v.get("runs"), v.get("diverged", 0)
        if err is None or (isinstance(err, float) and not math.isfinite(err)):
            cell = "diverged" if div else "-"
        elif runs and runs > 1 and v.get("std") is not None:
            cell = f"{err:.2f} ± {v['std']:.2f}"
        else:
            cell = f"{err:.2f}"
        rows.append(
            [
                (labels or {}).get(rule, f"`{rule}`"),
                cell,
                _num(runs, "d"),
                _num(div, "d"),
                _num(v.get("seconds"), ".0f"),
            ]
        )
    return rows


@generator("convnets-table")
def convnets_block(ctx: DocContext, args: list[str]) -> str:
    """Test error per rule of the committed ``repro convnets`` run (LeNet-5 and ResNet-20), with run counts."""
    _no_args("convnets-table", args)
    s = ctx.load("reproduction/convnets/summary.json")
    m = s["measured"]
    header = ["rule", "test error % (mean ± std over runs)", "runs", "diverged", "seconds (all runs)"]
    out = []
    for model, title in (("lenet5", "LeNet-5"), ("resnet20", "ResNet-20")):
        if isinstance(m.get(model), dict):
            out.append(f"\n{title}:\n" + _table(header, _rule_rows(m[model])))
    return "".join(out)


def _definition_arm(a: dict[str, Any]) -> str:
    """One arm's cell of the definitions table: ``mean ± std`` test error %, or its diverged count."""
    if a.get("diverged"):
        return f"diverged ({a['diverged']}/{a['runs']})"
    return f"{_num(a.get('test_error_pct'), '.2f')} ± {_num(a.get('std'), '.2f')}"


@generator("definitions-table")
def definitions_block(ctx: DocContext, args: list[str]) -> str:
    """Per factor of the committed ``repro definitions`` run: old and new arm (test error %), difference, verdict."""
    _no_args("definitions-table", args)
    m = ctx.load("reproduction/definitions/summary.json")["measured"]
    rows = []
    for name, f in m.items():
        if not (isinstance(f, dict) and "old" in f and "new" in f):
            continue
        arm = _definition_arm
        rows.append([f"`{name}`", f["old"]["label"], arm(f["old"]), f["new"]["label"], arm(f["new"]),
                     _num(f.get("difference"), "+.2f"), "yes" if f.get("holds") else "**no**"])  # fmt: skip
    header = ["factor", "old", "old: test error %", "new", "new: test error %", "new − old", "holds"]
    return _table(header, rows)


@generator("language-table")
def language_block(ctx: DocContext, args: list[str]) -> str:
    """Per rule of the committed ``repro language`` run: chosen step size, validation and test bits per character,
    the character-perplexity ratio to bp, run and diverged counts."""
    _no_args("language-table", args)
    m = ctx.load("reproduction/language/summary.json")["measured"]
    ratio = m.get("char_perplexity_ratio_to_bp", {})
    rows = []
    for rule, r in m["rules"].items():
        sd = r.get("val_bpc_std")
        val = _num(r.get("val_bpc"), ".3f") + (f" ± {_num(sd, '.3f')}" if r.get("runs", 0) > 1 else "")
        to_bp = "1" if rule == "bp" else _num(ratio.get(rule), ".3f")
        counts = f"{r.get('runs')} ({r.get('diverged')})"
        rows.append([f"`{rule}`", _num(r.get("lr"), "g"), val, _num(r.get("test_bpc"), ".3f"), to_bp, counts])
    header = ["rule", "Adam step size", "validation bits/char", "test bits/char", "char. perplexity / bp's",
              "runs (diverged)"]  # fmt: skip
    return _table(header, rows)


@generator("convert-norm")
def convert_norm_block(ctx: DocContext, args: list[str]) -> str:
    """ResNet-20 ``kp`` under each ``norm_feedback`` mode (``docs/convert/resnet20_norm_feedback.json``)."""
    _no_args("convert-norm", args)
    d = ctx.load("convert/resnet20_norm_feedback.json")
    head = (
        f"\nResNet-20, rule `{d['rule']}`, {d['data']}: {d['n_train']:,} training images, {d['epochs']} epoch(s), "
        f"seed {d['seed']}, test error on {d['n_test']:,} test images; `{d['command'].strip()}` "
        f"(torch {d['torch']}, {d['threads']} thread(s)"
        + (f", commit {d['commit'][:7]}" if d.get("commit") else "")
        + ").\n"
    )
    rows = [
        [
            f"`{r['norm_feedback']}`",
            "diverged" if r["diverged"] else _num(r["test_error_pct"], ".2f"),
            _num(r["final_train_loss"], ".3f"),
            _num(r["mean_align"], ".3f"),
            _num(r["steps"], "d"),
            _num(r["seconds"], ".0f"),
        ]
        for r in d["results"]
    ]
    return head + _table(
        ["norm_feedback", "test error %", "final train loss", "align (mean over layers)", "steps", "seconds"], rows
    )


def _bench_block(ctx: DocContext, rel: str) -> str:
    from ..bench.runner import markdown

    return "\n" + markdown(ctx.load(rel)).strip("\n") + "\n"


@generator("bench-convert")
def bench_convert_block(ctx: DocContext, args: list[str]) -> str:
    """The converted-model step benchmark (``docs/benchmarks/bench-convnets.json``): time and memory ratios."""
    _no_args("bench-convert", args)
    return _bench_block(ctx, "benchmarks/bench-convnets.json")


@generator("bench")
def bench_block(ctx: DocContext, args: list[str]) -> str:
    """A committed benchmark JSON as its table: ``bench FILE`` (``FILE`` under ``docs/benchmarks/``)."""
    if len(args) != 1:
        raise HeterogradError(f"generated bench takes one FILE under docs/benchmarks/, got {' '.join(args)!r}")
    return _bench_block(ctx, f"benchmarks/{args[0]}")


@generator("bench-memory")
def bench_memory_block(ctx: DocContext, args: list[str]) -> str:
    """Memory of one training step per case: step peak, resident parameters and optimiser state, their total,
    and both ratios to ``bp-autograd``: ``bench-memory [FILE]`` (default ``bench-convnets-memory.json``)."""
    if len(args) > 1:
        raise HeterogradError(f"generated bench-memory takes at most one FILE, got {' '.join(args)!r}")
    rel = f"benchmarks/{args[0] if args else 'bench-convnets-memory.json'}"
    data = ctx.load(rel)
    rows = []
    for r in data["results"]:
        if r.get("total_bytes") is None:
            raise HeterogradError(f"docs/{rel} predates the total-memory columns; rerun the benchmark")
        rows.append(
            [
                r["shape"],
                r["label"],
                _num(r["peak_bytes"] / 2**20, ".2f"),
                _num(r["memory_ratio_to_bp"], ".3f"),
                _num(r["param_bytes"] / 2**20, ".2f"),
                _num(r["optimizer_state_bytes"] / 2**20, ".2f"),
                _num(r["total_bytes"] / 2**20, ".2f"),
                _num(r["total_memory_ratio_to_bp"], ".3f"),
            ]
        )
    env = data["environment"]
    head = (
        f"\nFrom `docs/{rel}` (heterograd {env['heterograd']}, torch {env['torch']}, {env['device']}, "
        f"{env['torch_threads']} thread(s)); MiB = 2^20 bytes.\n"
    )
    return head + _table(
        [
            "case",
            "implementation",
            "step peak MiB",
            "peak × bp-autograd",
            "parameters + buffers MiB",
            "optimiser state MiB",
            "total MiB",
            "total × bp-autograd",
        ],
        rows,
    )


def _strength(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


@generator("hardware-table")
def hardware_block(ctx: DocContext, args: list[str]) -> str:
    """The headline numbers of a committed device sweep: ``hardware-table NAME`` (``hardware``,
    ``hardware-lenet``): accuracy without and on the reference device, the strength at which each rule has lost
    5 points, the mean accuracy loss over each sweep, diverged runs and runs."""
    if len(args) != 1:
        raise HeterogradError(f"generated hardware-table takes one experiment NAME, got {' '.join(args)!r}")
    s = ctx.load(f"reproduction/{args[0]}/summary.json")
    m = s["measured"]
    sweeps = list(m["loss_5_points_at"])
    runs: dict[str, int] = {}
    for r in m.get("runs", []):
        runs[r["rule"]] = runs.get(r["rule"], 0) + 1
    rows = []
    for rule in m["plain_accuracy"]:
        rows.append(
            [
                f"`{rule}`",
                _num(m["plain_accuracy"][rule], ".3f"),
                _num(m["reference_accuracy"][rule], ".3f"),
                *[_strength(m["loss_5_points_at"][sw].get(rule, "-")) for sw in sweeps],
                *[_num(m["mean_loss_points"][sw].get(rule), ".1f") for sw in sweeps],
                f"{m['diverged_runs'].get(rule, 0)} of {runs.get(rule, '?')}",
            ]
        )
    header = [
        "rule",
        "plain (no device)",
        "reference device",
        *[f"5-pt loss at: {sw}" for sw in sweeps],
        *[f"mean loss (points): {sw}" for sw in sweeps],
        "diverged runs",
    ]
    return _table(header, rows)


# ---------------------------------------------------------------------------------------------- the rewrite
_BLOCK = re.compile(r"<!-- generated: ([\w.-]+)((?: [^>]*?)?) -->(.*?)<!-- /generated: \1 -->", re.DOTALL)
_OPEN = re.compile(r"<!-- generated: ([\w.-]+)")


@dataclass
class BlockResult:
    """One generated block of one file: where, which generator, and whether the committed text was current."""

    file: Path
    key: str
    args: str
    line: int
    current: bool


_CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$|`[^`\n]+`", re.DOTALL | re.MULTILINE)


def render(text: str, file: Path, root: Path) -> tuple[str, list[BlockResult]]:
    """``text`` with every generated block rewritten; and one `BlockResult` per block.

    Markers inside code (fenced blocks, inline code spans) are examples, left as they are.
    """
    results: list[BlockResult] = []
    code: list[str] = []

    def hide(m: re.Match[str]) -> str:
        code.append(m.group(0))
        return f"\x00{len(code) - 1}\x00"

    text = _CODE.sub(hide, text)
    opened = len(_OPEN.findall(text))

    def sub(m: re.Match[str]) -> str:
        key, args, old = m.group(1), m.group(2).strip(), _restore(m.group(3), code)
        line = _restore(text[: m.start()], code).count("\n") + 1
        if key not in GENERATORS:
            raise HeterogradError(f"{file}:{line}: no generator {key!r}; registered: {', '.join(sorted(GENERATORS))}")
        new = GENERATORS[key](DocContext(root, file), args.split())
        results.append(BlockResult(file, key, args, line, new == old))
        return f"<!-- generated: {key}{' ' + args if args else ''} -->{new}<!-- /generated: {key} -->"

    out = _restore(_BLOCK.sub(sub, text), code)
    if opened != len(results):
        raise HeterogradError(
            f"{file}: {opened} '<!-- generated: KEY -->' marker(s) but {len(results)} complete block(s); each needs "
            "its closing '<!-- /generated: KEY -->' with the same KEY"
        )
    return out, results


def _restore(text: str, code: list[str]) -> str:
    return re.sub("\x00(\\d+)\x00", lambda m: code[int(m.group(1))], text)


def doc_files(root: Path) -> list[Path]:
    """``README.md`` and every markdown file under ``docs/`` of ``root``."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md"))


def generate_docs(root: Path, *, check: bool = False) -> list[BlockResult]:
    """Rewrite (or with ``check`` only compare) every generated block under ``root``; all blocks' results.

    Raises `HeterogradError` for an unknown generator, an unpaired marker or missing JSON (nothing is
    written then: every file is rendered before any is replaced).
    """
    if not (root / "docs").is_dir():
        raise HeterogradError(f"{root} has no docs/ folder; run from the repository root or pass --root")
    rendered: list[tuple[Path, str, str]] = []
    results: list[BlockResult] = []
    for f in doc_files(root):
        text = f.read_text()
        if "<!-- generated:" not in text:
            continue
        new, res = render(text, f, root)
        rendered.append((f, text, new))
        results += res
    if not check:
        for f, old, new in rendered:
            if new != old:
                atomic_write_text(f, new)
    return results


__all__ = ["GENERATORS", "BlockResult", "DocContext", "dig", "doc_files", "generate_docs", "generator", "render"]


@generator("perf-reruns")
def perf_reruns_block(ctx: DocContext, args: list[str]) -> str:
    """The performance page's reruns: ``hsp``'s step ratio in ``bench.json`` and ``reruns/bench-rerun-*.json``, and
    every ``cli-epoch*.json`` (see `heterograd.bench.epoch.rerun_spread_markdown`)."""
    _no_args("perf-reruns", args)
    from ..bench.epoch import rerun_spread_markdown

    bench = ctx.root / "docs" / "benchmarks"
    reruns = sorted((bench / "reruns").glob("bench-rerun-*.json"))
    steps = [ctx.load("benchmarks/bench.json"), *(ctx.load(f"benchmarks/reruns/{p.name}") for p in reruns)]
    epochs = [ctx.load(f"benchmarks/{p.name}") for p in sorted(bench.glob("cli-epoch*.json"))]
    return "\n" + rerun_spread_markdown(steps, epochs)
