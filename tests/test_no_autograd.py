"""House rule: learning never calls autograd (only probes and the bp baseline may)."""

from __future__ import annotations

import re
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


def test_learning_code_has_no_autograd_calls():
    pattern = re.compile(r"torch\.autograd|\.backward\(|autograd\.grad|requires_grad_\(True\)")
    learning = [
        *(SRC / "rules").glob("*.py"),
        *(SRC / "circuits").glob("*.py"),
        *(SRC / "optim").glob("*.py"),
        SRC / "train.py",
    ]
    offenders = [str(p) for p in learning if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
