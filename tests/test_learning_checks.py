"""The learning tests can fail: a planted broken transport (``B = 0`` on the hidden layers) fails each check.

Every test that says "X learns" compares with the readout-only baseline (hidden layers frozen, same data, seed
and loop) and must beat it by a stated margin: ``test_convert_rules`` (digits MLP, every rule),
``test_hardware_nn`` (converted models on devices), ``test_train_module`` (``train --model lenet5``) and
``test_foundation`` (circuits of every topology). Here
the same checks run on models whose feedback cannot reach the hidden layers, and each must say "does not learn".
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heterograd import convert
from learning_checks import plant_broken_transport, synapse_layers
from test_convert_rules import _train_digits, digits_learns
from test_foundation import circuit_accuracy, circuit_learns
from test_hardware_nn import device_learns, device_loss
from test_train_module import lenet5_accuracy, lenet5_learns


@pytest.mark.parametrize("rule", ["hsp", "usf", "dfa"])  # plastic B, a transport built from W, direct D
def test_planted_zero_transport_stops_all_feedback_to_hidden_layers(rule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    convert(model, rule, example_input=x if rule == "dfa" else None, weight_decay=0.0)  # no decay: exact zeros
    plant_broken_transport(model)
    F.cross_entropy(model(x), y).backward()
    layers = dict(synapse_layers(model))
    assert layers["4"].weight.grad.abs().sum() > 0  # the readout still learns from the output error
    for name in ("0", "2"):
        assert torch.count_nonzero(layers[name].weight.grad) == 0, name


@pytest.mark.needs_data("fashion-mnist")  # its LeNet-5 check reads Fashion-MNIST
def test_a_planted_broken_transport_fails_every_learning_check(digits):
    """The closing check of issue 20 item 3: the same checks that pass for working feedback fail here."""
    readout = _train_digits("bp", digits, mode="readout")[1]
    for rule in ("hsp", "dfa"):  # a transport through B, a direct one (test above: each is zero)
        acc = _train_digits(rule, digits, mode="broken")[1]
        assert not digits_learns(acc, readout), (rule, acc, readout)
    broken = device_loss(digits, "conv", "hsp", "moderate", mode="broken")
    assert not device_learns(broken, device_loss(digits, "conv", "hsp", "moderate", mode="readout"))
    assert not lenet5_learns(lenet5_accuracy("broken"), lenet5_accuracy("readout"))
    readout = circuit_accuracy(digits, "layered", mode="readout")
    assert not circuit_learns(circuit_accuracy(digits, "layered", mode="broken"), readout)
