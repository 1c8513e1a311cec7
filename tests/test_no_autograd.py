"""House rule: learning never calls autograd (only probes and the bp baseline may)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import heterograd
from heterograd import TrainConfig, Trainer, make_rule
from heterograd.rules import RULES

SRC = Path(heterograd.__file__).parent


@pytest.mark.parametrize("rule", sorted(r for r in RULES if not make_rule(r).uses_autograd))
@pytest.mark.parametrize("topology", ["layered", "direct"])
def test_training_works_with_autograd_disabled(digits, autograd_forbidden, rule, topology):
    r = make_rule(rule)
    if not r.circuit_engine or (r.feedback == "direct" and topology != "direct"):
        pytest.skip(f"{rule} does not apply to a {topology} Circuit (tests/test_rules_contract.py checks the error)")
    tr = Trainer(TrainConfig(rule=rule, topology=topology, epochs=2, probes=False, n_train=256), digits)
    res = tr.fit(None, progress=False)
    assert not res.summary["diverged"]
    assert res.summary["test_accuracy"] > 0.3
    for t in res.circuit.plastic_tensors():
        assert not t.requires_grad


def test_bp_is_the_only_base_rule_declaring_autograd():
    assert {n for n in RULES if make_rule(n).uses_autograd} == {"bp"}


# Any way into autograd: torch.autograd / `from torch import autograd`, .backward(), reading .grad, turning
# requires_grad or grad mode on, torch.func / functorch transforms, and the project's own autodiff module.
AUTOGRAD = re.compile(
    r"(?<!uses_)\bautograd\b|\.backward\(|\.grad\b(?!\s*\()|requires_grad_\(\s*True|requires_grad\s*=\s*True"
    r"|\benable_grad\b|set_grad_enabled\(\s*True|\btorch\.func\b|\bfunctorch\b|from\s+torch\s+import\s+func\b"
    r"|\bautodiff\b"
)


def _declares_autograd(node: ast.ClassDef) -> bool:
    for st in node.body:
        targets = st.targets if isinstance(st, ast.Assign) else [st.target] if isinstance(st, ast.AnnAssign) else []
        value = getattr(st, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "uses_autograd" for t in targets):
            return isinstance(value, ast.Constant) and value.value is True
    return False


def _code_without_declared_exceptions(text: str) -> str:
    """``text`` with comments, strings (docstrings) and the bodies of classes declaring ``uses_autograd = True``
    blanked out."""
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and _declares_autograd(node):
            for i in range(node.lineno - 1, node.end_lineno or node.lineno):
                lines[i] = "\n"
    rows = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                lo = c0 if r == r0 else 0
                hi = c1 if r == r1 else len(rows[r - 1])
                for c in range(lo, min(hi, len(rows[r - 1]))):
                    if rows[r - 1][c] != "\n":
                        rows[r - 1][c] = " "
    return "".join("".join(r) for r in rows)


def autograd_uses(text: str) -> list[str]:
    """The autograd entry points used by the code in ``text`` (outside declared exceptions)."""
    return AUTOGRAD.findall(_code_without_declared_exceptions(text))


@pytest.mark.parametrize(
    "snippet",
    [
        "from ..autodiff import potential_gradients\n",  # missed by 0.1.0's scan
        "import torch\nf = torch.func.grad(loss)\n",  # missed
        "import torch\nwith torch.enable_grad():\n    pass\n",  # missed
        "from torch import autograd\n",
        "from torch.func import vjp\n",
        "y = w.grad\n",
        "w.requires_grad_(True)\n",
        "loss.backward()\n",
    ],
)
def test_the_scan_catches_every_way_into_autograd(snippet):
    assert autograd_uses(snippet), snippet


def test_the_scan_skips_comments_strings_and_declared_autograd_rules():
    ok = '''
class BP:
    uses_autograd = True
    def teaching(self):
        from ..autodiff import potential_gradients  # the documented exception
class HSP:
    """Never calls torch.autograd."""
    uses_autograd = False  # see torch.autograd
'''
    assert autograd_uses(ok) == []
    assert autograd_uses(ok.replace("uses_autograd = True", "uses_autograd = False"))


def test_learning_code_has_no_autograd_calls():
    learning = [
        *(SRC / "rules").glob("*.py"),
        *(SRC / "circuits").glob("*.py"),
        *(SRC / "optim").glob("*.py"),
        *(SRC / "distributed").glob("*.py"),
        SRC / "train.py",
        SRC / "config.py",
        SRC / "motifs.py",
        SRC / "evolve" / "population.py",
    ]
    offenders = {str(p): autograd_uses(p.read_text(encoding="utf-8")) for p in learning}
    assert {p: u for p, u in offenders.items() if u} == {}
