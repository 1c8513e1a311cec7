"""Every rule on every synapse type of a converted model; baselines learn; probes measure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heterograd import HeterogradError, convert, probe
from heterograd.nn import plastic_layers
from heterograd.rules import RULES, poly_delta
from heterograd.rules.base import FeedbackSignals, ForwardSignals
from heterograd.rules.poly import _synapse_feedback_delta, _synapse_forward_delta
from heterograd.synapses import DENSE
from learning_checks import freeze_hidden, plant_broken_transport

NN_RULES = sorted(n for n, c in RULES.items() if c.nn_engine)
THETA_W = [0.9, 0.1, 0.2, -0.3, 0.05, -0.07, 1e-3, 0.01]
THETA_B = [0.8, 0.0, -0.2, 0.3, 0.04, 0.06, 1e-3, -0.01]  # p·u needs the presynaptic potential: 0 here


def _options(rule: str, x) -> dict:
    if rule == "dfa":
        return {"example_input": x}
    if rule == "poly":
        return {"theta_w": THETA_W, "theta_b": THETA_B}
    return {"weight_decay": 1e-3}


def _synapse_case(kind: str):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "dense":
        return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)), torch.randn(6, 3, generator=g)
    if kind == "dense-positions":
        return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)), torch.randn(6, 7, 3, generator=g)
    if kind == "conv1d":
        m = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv1d(4, 4, 3, stride=2, groups=4))
        return m, torch.randn(6, 2, 9, generator=g)
    if kind == "conv2d":
        m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2))
        return m, torch.randn(6, 2, 9, 9, generator=g)
    if kind == "embedding":
        return nn.Sequential(nn.Embedding(6, 5), nn.Tanh(), nn.Linear(5, 4)), torch.randint(0, 6, (6, 7), generator=g)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["dense", "dense-positions", "conv1d", "conv2d", "embedding"])
@pytest.mark.parametrize("rule", NN_RULES)
def test_rule_contract_on_every_synapse_type(rule, kind):
    model, x = _synapse_case(kind)
    convert(model, rule, **_options(rule, x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"backward changed {k}"
    cls = RULES[rule]
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    has_param_B = any(n.endswith("feedback") for n, _ in model.named_parameters())
    assert has_param_B == (cls.feedback == "plastic")
    has_buffer_B = any(n.endswith("feedback") for n, _ in model.named_buffers())
    assert has_buffer_B == (cls.feedback in ("frozen", "direct"))


def test_poly_on_any_synapse_equals_the_dense_kernel(float64):
    """The synapse-generic polynomial rule equals the Circuit's batched kernel on dense signals."""
    g = torch.Generator().manual_seed(3)
    n, I, J = 7, 4, 5
    u, p = torch.randn(n, I, generator=g), torch.randn(n, I, generator=g)
    h, hp = torch.randn(n, J, generator=g), torch.randn(n, J, generator=g)
    W, b, B = torch.randn(I, J, generator=g), torch.randn(I, generator=g), torch.randn(J, I, generator=g)
    tw, tb = torch.tensor(THETA_W), torch.tensor([0.8, 0.3, -0.2, 0.3, 0.04, 0.06, 1e-3, -0.01])
    for scale, uu in ((None, u), (1.0, u / n)):  # Circuit signals; converted-layer signals (u carries 1/n)
        sig = ForwardSignals(h, p, p, uu, synapse=DENSE, scale=scale)
        dW, db = _synapse_forward_delta(tw, sig, W, b)
        assert torch.allclose(dW, poly_delta(tw, u, p, h, W), atol=1e-12)
        ref_b = poly_delta(tw, u, p, torch.ones(n, 1), b.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(db, ref_b, atol=1e-12)
        fb = FeedbackSignals(h, hp, uu, True, 1, 0, synapse=DENSE, scale=scale)
        assert torch.allclose(_synapse_feedback_delta(tb, fb, B), poly_delta(tb, h, hp, u, B), atol=1e-12)


@pytest.mark.parametrize("k", range(8))
def test_poly_feature_on_conv_equals_dense_when_the_kernel_covers_the_input(float64, k):
    """A conv whose kernel spans its whole input is a dense layer: every poly feature must agree."""
    theta = [0.0] * 8
    theta[k] = 1.0
    theta_b = [0.0] * 8
    theta_b[k if k != 1 else 0] = 1.0
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 1))
    dense = nn.Sequential(nn.Flatten(), nn.Linear(18, 3), nn.Tanh(), nn.Linear(3, 4))
    with torch.no_grad():
        dense[1].weight.copy_(conv[0].weight.flatten(1))
        dense[1].bias.copy_(conv[0].bias)
        dense[3].weight.copy_(conv[2].weight.flatten(1))
        dense[3].bias.copy_(conv[2].bias)
    for m in (conv, dense):
        convert(m, "poly", theta_w=theta, theta_b=theta_b, feedback_init="transpose")
    x = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(conv(x).flatten(1), y).backward()
    F.cross_entropy(dense(x), y).backward()
    assert torch.allclose(conv[0].weight.grad.flatten(1), dense[1].weight.grad, atol=1e-12)
    assert torch.allclose(conv[0].bias.grad, dense[1].bias.grad, atol=1e-12)
    assert torch.allclose(conv[2].weight.grad.flatten(1), dense[3].weight.grad, atol=1e-12)
    assert torch.allclose(conv[2].feedback.grad.flatten(1), dense[3].feedback.grad.t(), atol=1e-12)


def test_poly_p_feature_of_B_is_an_error_in_converted_models():
    model, x = _synapse_case("dense")
    convert(model, "poly", theta_b=[1, 0.5, 0, 0, 0, 0, 0, 0])
    with pytest.raises(HeterogradError, match="theta_b"):
        model(x).sum().backward()


def test_poly_with_bilinear_theta_equals_hsp_on_conv(float64):
    x = torch.randn(4, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    grads = []
    for rule in ("hsp", "poly"):
        model, _ = _synapse_case("conv2d")
        convert(model.double(), rule, weight_decay=0.01, feedback_gain=0.5, seed=3)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


#: "learns" means: test accuracy above the readout-only baseline (hidden layers frozen) by this much.
DIGITS_MARGIN = 0.04


def _train_digits(rule: str, digits, epochs: int = 4, mode: str = "full", **kw):
    """Train the 64-64-64-10 tanh MLP converted by ``rule`` on digits; ``(model, test accuracy)``.

    ``mode``: ``full`` (every layer learns), ``readout`` (hidden layers frozen: the readout-only baseline) or
    ``broken`` (a planted zero transport: no feedback reaches the hidden layers; see ``learning_checks``).
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    x, y = digits.x_train, digits.y_train
    if rule == "dfa":
        kw["example_input"] = x[:8]
    convert(model, rule, seed=1, **kw)
    params = freeze_hidden(model) if mode == "readout" else list(model.parameters())
    if mode == "broken":
        plant_broken_transport(model)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(digits.x_test).argmax(1) == digits.y_test).float().mean())
    return model, acc


@pytest.fixture(scope="module")
def digits_readout(digits) -> float:
    """Test accuracy of the readout-only baseline: the same MLP, data, seed and loop, hidden layers frozen.

    One baseline serves every rule: with the hidden layers frozen, each rule's output-layer update is the same
    local product of the output error and the last hidden activity (no feedback weights are involved).
    """
    return _train_digits("bp", digits, mode="readout")[1]


def digits_learns(acc: float, readout: float) -> bool:
    """The check of the digits learning test."""
    return acc > readout + DIGITS_MARGIN


@pytest.mark.parametrize("rule", ["dfa", "usf", "brsf", "frsf", "kp", "hsp", "fa"])
def test_baselines_and_heterosynaptic_rules_learn_digits(digits, digits_readout, rule):
    _, acc = _train_digits(rule, digits)
    assert digits_learns(acc, digits_readout), f"{rule}: test accuracy {acc:.3f}, readout only {digits_readout:.3f}"


def test_probe_of_bp_is_the_gradient(digits):
    model, _ = _train_digits("bp", digits, epochs=1)
    r = probe(model, digits.x_test[:64], digits.y_test[:64], F.cross_entropy)
    assert r.direct == ["4"]
    for name, v in r.layers.items():
        assert v["phi"] == pytest.approx(1.0, abs=1e-6) and v["align"] == pytest.approx(1.0, abs=1e-6), name
        assert v["dw_cos"] == pytest.approx(1.0, abs=1e-5) and v["angle"] < 0.1, name  # float32 rounding
    assert r.dc_score == 1.0


def test_probe_reports_positive_phi_once_hsp_learns_and_changes_nothing(digits):
    model, _ = _train_digits("hsp", digits, epochs=2)
    x, y = digits.x_test[:128], digits.y_test[:128]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = probe(model, x, y, F.cross_entropy)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name in ("0", "2"):
        assert r.layers[name]["phi"] > 0 and r.layers[name]["align"] > 0.3, (name, r.layers[name])
    assert "DC over channels" in r.table()
    assert r.as_dict()["phi/0"] == r.layers["0"]["phi"] and "dc_score" in r.as_dict()


def test_probe_catches_anti_aligned_feedback():
    """The built-in failing case: fa from B = -W (as transport) gives phi < 0 below the output layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    convert(model, "fa", feedback_init="anti")
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))
    r = probe(model, x, y, F.cross_entropy)
    assert r.layers["0"]["phi"] < 0 and r.layers["0"]["dw_cos"] < 0
    assert r.layers["2"]["angle"] > 179.9


def test_probe_keeps_batchnorm_statistics_and_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    convert(model, "kp")
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    stats = [b.clone() for b in model.buffers()]
    probe(model, x, y, F.cross_entropy)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))
    assert len(plastic_layers(model)) == 3


@pytest.mark.parametrize("rule", NN_RULES)
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_layer_fast_path_equals_negated_deltas(float64, rule, kind):
    """A rule's one-layer fast path (the .grad a converted layer writes) is its deltas, negated."""
    from heterograd.rules import FeedbackSignals, Params, Signals, make_rule, rule_hyperparameters
    from heterograd.synapses import Conv

    options = {"weight_decay": 0.01, "feedback_gain": 0.6 if rule != "kp" else 1.0}
    r = make_rule(rule, **{k: v for k, v in options.items() if k in rule_hyperparameters(rule)})
    g = torch.Generator().manual_seed(0)
    if kind == "dense":
        syn, h, u = DENSE, torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
        W, B = torch.randn(4, 3, generator=g), torch.randn(3, 4, generator=g)
    else:
        syn = Conv((4, 2, 3, 3), stride=2, padding=1, groups=2)
        h, u = torch.randn(5, 4, 6, 6, generator=g), torch.randn(5, 4, 3, 3, generator=g)
        W, B = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    plastic = r.feedback == "plastic"
    sig = ForwardSignals(h, u, u, u, synapse=syn, scale=1.0)
    fast = r.layer_grads(sig, W, b, B if plastic else None)
    if fast is None:
        pytest.skip(f"{rule} has no fast path (the engine uses its deltas)")
    fb = (FeedbackSignals(h, None, u, True, 1, 0, synapse=syn, scale=1.0),) if plastic else ()
    d, _ = r.deltas(Signals((sig,), fb), Params((W,), (b,), (B,) if plastic else ()), None)
    assert torch.allclose(fast[0], -d.W[0], atol=1e-12) and torch.allclose(fast[1], -d.b[0], atol=1e-12)
    if plastic:
        assert torch.allclose(fast[2], -d.B[0], atol=1e-12)
    else:
        assert fast[2] is None
