"""The house keeps its floors: imports inside ``src/heterograd`` only run downward, and no package forms a circle.

The layer list below is the one place that says which module lives on which floor. A module may import from its
own floor or any floor below it, never from a floor above. Every import counts: module level, inside functions and
under ``TYPE_CHECKING`` (a type-only import is still a dependency a reader has to follow). The package root
``heterograd/__init__.py`` is the public facade above every floor; no module inside the package may import it.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "heterograd"

# Top floor first. Patterns are fnmatch patterns over dotted module names; the first floor with a match wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("command line", ("heterograd.cli", "heterograd.__main__", "heterograd.*.cli", "heterograd.*.__main__")),
    (
        "experiments, evolution, benchmarks, studies",
        ("heterograd.experiments*", "heterograd.evolve*", "heterograd.bench*", "heterograd.tune*"),
    ),
    (
        "training loop",
        (
            "heterograd.train",
            "heterograd.train_module",
            "heterograd.config",
            "heterograd.distributed*",
            "heterograd.motifs",
        ),
    ),
    (
        "rules, probes, optimisers, converted modules",
        ("heterograd.rules*", "heterograd.probes*", "heterograd.optim*", "heterograd.nn*", "heterograd.hardware*"),
    ),
    ("true gradients (bp baseline and probes)", ("heterograd.autodiff",)),
    (
        "synapses, circuits, data, losses, models",
        (
            "heterograd.synapses*",
            "heterograd.circuits*",
            "heterograd.data*",
            "heterograd.losses",
            "heterograd.models*",
        ),
    ),
    (
        "base helpers",
        (
            "heterograd.errors",
            "heterograd.results",
            "heterograd.checkpoint",
            "heterograd.plots",
            "heterograd.runtime",
            "heterograd.progress",
            "heterograd.tensorboard",
            "heterograd._version",
            "heterograd._startup",
        ),
    ),
]


def floor_of(module: str) -> int:
    """Index into :data:`LAYERS` (0 = top) of a dotted module name; KeyError when no floor lists it."""
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    raise KeyError(module)


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Every ``heterograd`` module that ``source`` imports, as dotted names (relative imports resolved).

    ``from .x import y`` yields ``pkg.x.y`` when that is a module of the package, else ``pkg.x``; the caller
    trims names to modules that exist.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "heterograd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "heterograd":
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def collect(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: {imported heterograd modules}}`` from ``{module: (source, is_package)}``."""
    graph: dict[str, set[str]] = {}
    for mod, (src, is_pkg) in sources.items():
        targets = set()
        for t in imports_of(mod, src, is_pkg):
            while t and t not in sources:  # `from .x import name` -> module .x
                t = t.rpartition(".")[0]
            if t and t != mod:
                targets.add(t)
        graph[mod] = targets
    return graph


def reaches(graph: Mapping[str, set[str]], start: str, goal: str) -> bool:
    """Whether ``start`` imports ``goal``, directly or through other modules."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Upward imports, imports of the package root or of a module's own package, and circles between packages.

    A module importing a package it sits in (``experiments.base`` doing ``from . import load_all``) fails, whether
    or not that package's ``__init__`` imports it back today: a circle inside one unit, or one waiting for the
    ``__init__``'s next import, which the circle check between units cannot see.
    Entry points (``*.cli``, ``*.__main__``) may import their package, which never imports them.
    """
    graph = collect(sources)
    problems: list[str] = []
    for mod, targets in sorted(graph.items()):
        if mod == "heterograd":
            continue
        for t in sorted(targets):
            if t == "heterograd":
                problems.append(f"{mod} imports the package root heterograd (import the module that defines it)")
                continue
            if mod.startswith(t + ".") and floor_of(mod) > 0:
                why = "whose __init__ imports its modules: a circle" if reaches(graph, t, mod) else "its face"
                problems.append(
                    f"{mod} imports its own package {t} ({why}); import the module that defines the name instead"
                )
                continue
            if floor_of(t) < floor_of(mod):
                problems.append(
                    f"{mod} ({LAYERS[floor_of(mod)][0]}) imports {t}, which sits higher ({LAYERS[floor_of(t)][0]})"
                )

    # circles between top-level units (heterograd.rules, heterograd.train, ...), skipping the facade
    def unit(m: str) -> str:  # entry points (``*.cli``, ``*.__main__``) stand apart from the package they sit in
        return m if floor_of(m) == 0 else ".".join(m.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        if mod == "heterograd":
            continue
        for t in targets:
            if t != "heterograd" and unit(t) != unit(mod):
                edges.setdefault(unit(mod), set()).add(unit(t))
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                problems.append("import circle: " + " -> ".join([*stack[stack.index(m) :], m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return problems


def package_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(p, SRC): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in sorted(SRC.rglob("*.py"))
    }


def test_every_module_has_a_floor():
    missing = []
    for mod in package_sources():
        if mod == "heterograd":
            continue
        try:
            floor_of(mod)
        except KeyError:
            missing.append(mod)
    assert not missing, f"modules on no floor of LAYERS (add them to tests/test_layers.py): {missing}"


def test_imports_only_run_downward_and_form_no_circle():
    problems = violations(package_sources())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "is_pkg", "line", "expect"),
    [
        ("heterograd.circuits.circuit", False, "from ..rules import HSP", "sits higher"),
        ("heterograd.rules.classic", False, "from ..train import local_step", "sits higher"),
        ("heterograd.train", False, "from .cli import main", "sits higher"),
        ("heterograd.rules", True, "from .. import __version__", "package root"),
        ("heterograd.data.sources", False, "import heterograd.experiments.base", "sits higher"),
        ("heterograd.experiments.base", False, "from . import load_all", "its own package"),
        ("heterograd.rules.classic", False, "from .. import rules", "its own package"),
        ("heterograd.nn.convert", False, "import heterograd.nn", "its own package"),
        ("heterograd.distributed.module", False, "from . import RankMixin", "its own package"),  # no circle today
    ],
)
def test_a_planted_upward_import_is_caught(module, is_pkg, line, expect):
    sources = package_sources()
    src, pkg = sources[module]
    assert pkg == is_pkg
    sources[module] = (src + "\n\ndef _planted():\n    " + line + "\n", pkg)
    problems = violations(sources)
    assert any(module in p and expect in p for p in problems), problems


def test_a_planted_circle_between_packages_of_one_floor_is_caught():
    sources = package_sources()
    src, pkg = sources["heterograd.probes"]
    rules_src, rules_pkg = sources["heterograd.rules.base"]
    sources["heterograd.rules.base"] = (rules_src + "\nfrom ..probes import measure\n", rules_pkg)
    if "from ..rules" not in src and "from .rules" not in src:
        sources["heterograd.probes"] = (src + "\nfrom ..rules import Rule\n", pkg)
    assert any(p.startswith("import circle") for p in violations(sources))
