"""Converted models on devices (``heterograd.hardware.attach``): reads, pulse-model writes, ideal == plain."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heterograd.errors import HeterogradError
from heterograd.hardware import DeviceModel, LayerDevices, attach
from heterograd.nn import convert, probe
from learning_checks import freeze_hidden, plant_broken_transport


def _mlp(rule: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return convert(nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)), rule, seed=seed)


def _convnet(rule: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    return convert(net, rule, seed=seed)


NETS = {"mlp": _mlp, "conv": _convnet}


def _data(digits, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.x_train[:n], digits.y_train[:n]


def _train(model: nn.Module, x, y, handle=None, *, epochs: int = 1, lr: float = 0.05, momentum: float = 0.0):
    """Minibatch SGD (batch 32); returns the full-batch losses before and after (evaluated without noise)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def full_loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    first = full_loss()
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            if handle is None:
                opt.step()
            else:
                handle.step(opt)
    return first, full_loss()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- ideal == plain, bit for bit
@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("rule", ["bp", "fa", "hsp"])
def test_ideal_preset_equals_plain_converted_run_bit_for_bit(digits, net, rule):
    x, y = _data(digits, 128)
    plain = NETS[net](rule)
    ideal = NETS[net](rule)
    handle = attach(ideal, "ideal", seed=3)
    assert handle.is_ideal
    assert all(getattr(m, "plasticity", None) is None or m.plasticity.device is None for m in ideal.modules())
    lp = _train(plain, x, y, momentum=0.9)
    li = _train(ideal, x, y, handle, momentum=0.9)
    assert lp == li
    for (k, a), b in zip(_state(plain).items(), _state(ideal).values(), strict=True):
        assert torch.equal(a, b), k


def test_update_only_device_reads_exactly(digits):
    """A device without read noise: the forward pass multiplies with the stored tensors themselves."""
    x, _ = _data(digits, 64)
    plain, dev = _mlp("hsp"), _mlp("hsp")
    h = attach(dev, "ideal", seed=0, w_range=1e9)  # soft-bounded analog updates, bounds never reached
    assert not h.is_ideal
    assert torch.equal(plain(x), dev(x))  # grad enabled: through the device hook


def test_read_only_device_keeps_the_optimisers_step_exactly(digits):
    x, y = _data(digits, 64)
    model = _mlp("hsp")
    h = attach(model, "ideal", seed=0, read_noise=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    expected = [p.detach().add(p.grad, alpha=-0.1) for p in model.parameters()]
    h.step(opt)
    assert all(torch.equal(p.detach(), e) for p, e in zip(model.parameters(), expected, strict=True))


# --------------------------------------------------------------------------- training on devices
@pytest.mark.parametrize(
    ("net", "rule", "preset"),
    [
        ("mlp", "hsp", "moderate"),
        ("mlp", "hsp", "harsh"),
        ("mlp", "bp", "harsh"),
        ("mlp", "fa", "harsh"),
        ("conv", "hsp", "moderate"),
        ("conv", "hsp", "harsh"),
        ("conv", "bp", "harsh"),
    ],
)
def test_converted_models_learn_on_devices(digits, net, rule, preset):
    last = device_loss(digits, net, rule, preset)
    readout = device_loss(digits, net, rule, preset, mode="readout")
    assert device_learns(last, readout), (last, readout)


#: "learns on a device" means: final training loss below this fraction of the readout-only baseline's.
DEVICE_MARGIN = 0.9


def device_loss(digits, net: str, rule: str, preset: str, mode: str = "full") -> float:
    """Final full-batch training loss of ``net`` converted by ``rule`` on ``preset`` devices (5 epochs, 256 images).

    ``mode``: ``full``, ``readout`` (hidden layers frozen: the readout-only baseline, same devices and seed) or
    ``broken`` (a planted zero transport; see ``learning_checks``).
    """
    x, y = _data(digits, 256)
    model = NETS[net](rule)
    handle = attach(model, preset, seed=0)
    assert len(handle.layers) == (2 if net == "mlp" else 3)
    if mode == "readout":
        freeze_hidden(model)
    elif mode == "broken":
        plant_broken_transport(model)
    first, last = _train(model, x, y, handle, epochs=5, lr=0.1)
    assert last < first, (first, last)
    return last


def device_learns(last: float, readout: float) -> bool:
    """The check of the device learning test."""
    return last < DEVICE_MARGIN * readout


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_weights_stay_on_the_state_grid_within_bounds(digits, net):
    """With ``levels = N`` every (non-stuck) W, b, B device holds one of its N states after every step."""
    x, y = _data(digits, 128)
    model = NETS[net]("hsp")
    handle = attach(model, "harsh", seed=1, levels=8, stuck_fraction=0.05)
    _train(model, x, y, handle, lr=0.2)
    checked = 0
    for ld in handle.layers:
        m = ld.module
        for t, a in ((m.weight, ld.W), (m.bias, ld.b), (m.feedback, ld.B)):
            assert a is not None and a.stuck is not None
            k = (t.detach() - a.w_min) / (a.w_max - a.w_min) * 7
            free = ~a.stuck
            assert torch.allclose(k[free], k[free].round(), atol=1e-3)
            assert (k[free].round() >= 0).all() and (k[free].round() <= 7).all()
            checked += int(free.sum())
    assert checked > 1000


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_stuck_devices_never_change(digits, net):
    x, y = _data(digits, 128)
    model = NETS[net]("hsp")
    handle = attach(model, "moderate", seed=2, stuck_fraction=0.3)
    before = [(t, a.stuck, t.detach().clone()) for ld in handle.layers for t, a in handle._pairs(ld)]
    _train(model, x, y, handle, lr=0.2)
    for t, stuck, old in before:
        assert stuck is not None and stuck.any()
        assert torch.equal(t.detach()[stuck], old[stuck])
        assert not torch.equal(t.detach()[~stuck], old[~stuck])  # the free devices did learn


def test_frozen_feedback_is_programmed_once_and_never_written(digits):
    x, y = _data(digits, 128)
    model = _mlp("fa")
    handle = attach(model, "harsh", seed=0)
    Bs = [ld.module.feedback.clone() for ld in handle.layers]
    _train(model, x, y, handle)
    for ld, B in zip(handle.layers, Bs, strict=True):
        assert ld.B is not None
        assert torch.equal(ld.module.feedback, B)


def test_step_programs_the_optimisers_step_through_the_pulse_model(digits):
    """``handle.step`` = ``apply_update(W_old, W_after - W_old)`` with the update stream."""
    x, y = _data(digits, 32)
    model = _mlp("hsp")
    handle = attach(model, "harsh", seed=0, read_noise=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    twin = copy.deepcopy(model.state_dict())
    ld = handle.layers[0]
    W_old = ld.module.weight.detach().clone()
    expected_step = -0.1 * ld.module.weight.grad
    g = torch.Generator().set_state(handle.update_generator.get_state())
    handle.step(opt)
    expected = ld.W.apply_update(W_old, (W_old + expected_step) - W_old, g)  # W is the first tensor written
    assert torch.equal(ld.module.weight.detach(), expected)
    assert not torch.equal(ld.module.weight.detach(), twin["0.weight"] + expected_step)


# --------------------------------------------------------------------------- reads
def test_forward_and_feedback_reads_are_independent_bp_transposed_read(digits):
    """bp's transport is a second read of W's array: own noise, uncorrelated with the forward read's."""
    x, y = _data(digits, 64)
    model = _mlp("bp")
    handle = attach(model, "ideal", seed=0, read_noise=0.5)
    ld: LayerDevices = handle.layers[1]  # the output layer transports to the hidden layer
    seen: dict[str, torch.Tensor] = {}
    rf, rb = ld.read_forward, ld.read_feedback

    def fwd(W, b):
        seen["W"] = (out := rf(W, b))[0].detach().clone()
        return out

    def fb(M):
        seen["M"] = rb(M).detach().clone()
        return seen["M"]

    ld.read_forward, ld.read_feedback = fwd, fb  # type: ignore[method-assign]
    F.cross_entropy(model(x), y).backward()
    W = ld.module.weight.detach()
    nf, nb = seen["W"] - W, seen["M"].t() - W  # dense B is laid out like Wᵀ
    s = 0.5 / 32**0.5
    for n in (nf, nb):
        assert 0.9 * s < n.std().item() < 1.1 * s
    r = torch.corrcoef(torch.stack([nf.flatten(), nb.flatten()]))[0, 1].item()
    assert abs(r) < 0.1, r


def test_feedback_model_ideal_gives_exact_feedback_reads():
    model = _mlp("hsp")
    handle = attach(model, "harsh", seed=0, feedback="ideal")
    ld = handle.layers[1]
    B = ld.module.feedback.detach()
    assert torch.equal(ld.read_feedback(B), B)
    assert not torch.equal(ld.read_forward(ld.module.weight.detach(), None)[0], ld.module.weight.detach())
    assert handle.feedback_model == DeviceModel()


def test_evaluation_reads_stored_values_training_reads_are_noisy(digits):
    x, _ = _data(digits, 32)
    model = _mlp("hsp")
    handle = attach(model, "moderate", seed=0)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    n1, n2 = model(x), model(x)
    assert not torch.equal(n1, n2) and not torch.equal(n1, a)
    with handle.noiseless():
        assert torch.equal(model(x).detach(), a)


def test_probes_measure_the_stored_conductances(digits):
    """A probe on a model on noisy devices equals the probe of the same stored weights without devices."""
    x, y = _data(digits, 64)
    model = _mlp("hsp")
    handle = attach(model, "harsh", seed=0, read_noise=1.0)
    twin = _mlp("hsp")
    twin.load_state_dict(model.state_dict())
    on_device = probe(model, x, y, F.cross_entropy).as_dict()
    plain = probe(twin, x, y, F.cross_entropy).as_dict()
    assert on_device == plain
    assert handle.noisy  # the probe did not switch the training reads off


# --------------------------------------------------------------------------- seeds, checkpoints
def test_reproducible_by_seed(digits):
    x, y = _data(digits, 96)
    runs = []
    for seed in (0, 0, 1):
        model = _convnet("hsp")
        h = attach(model, "harsh", seed=seed)
        _train(model, x, y, h)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resume_from_state_dicts_continues_exactly(digits):
    x, y = _data(digits, 128)

    def run(stop: int | None, resume: dict | None = None):
        model = _mlp("hsp")
        h = attach(model, "harsh", seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if resume is not None:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["opt"])
            h.load_state_dict(resume["device"])
        batches = range(0, 128, 32)
        for j, i in enumerate(batches):
            if resume is not None and j < 2:
                continue
            if stop is not None and j == stop:
                return {"model": _state(model), "opt": copy.deepcopy(opt.state_dict()), "device": h.state_dict()}
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            h.step(opt)
        return _state(model)

    full = run(None)
    saved = run(2)
    resumed = run(None, saved)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(HeterogradError, match="seed"):
        attach(_mlp("hsp"), "harsh", seed=6).load_state_dict(saved["device"])
    with pytest.raises(HeterogradError, match="differs in levels"):
        attach(_mlp("hsp"), "harsh", seed=5, levels=16).load_state_dict(saved["device"])


def test_device_state_saves_with_torch_save_weights_only(tmp_path):
    model = _mlp("hsp")
    h = attach(model, "harsh", seed=1)
    torch.save({"model": model.state_dict(), "device": h.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh = _mlp("hsp")
    h2 = attach(fresh, "harsh", seed=1)
    fresh.load_state_dict(ckpt["model"])
    h2.load_state_dict(ckpt["device"])
    assert torch.equal(h2.read_generator.get_state(), h.read_generator.get_state())


def test_tensors_the_optimiser_leaves_alone_get_no_pulses(digits):
    """Frozen layers and parameters without a gradient keep their stored values bit for bit."""
    x, y = _data(digits, 64)
    model = _mlp("hsp")
    handle = attach(model, "moderate", seed=0)
    model[2].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        model[0].weight.grad = None  # the optimiser skips it
        handle.step(opt)
    after = model.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["2.bias"], before["2.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])


def test_adam_steps_stay_on_the_grid(digits):
    x, y = _data(digits, 128)
    model = _mlp("kp")
    handle = attach(model, "ideal", seed=0, w_range=3.0, levels=16)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        handle.step(opt)
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < 0.7 * first
    for ld in handle.layers:
        a = ld.W
        k = (ld.module.weight.detach() - a.w_min) / (a.w_max - a.w_min) * 15
        assert torch.allclose(k, k.round(), atol=1e-3)


# --------------------------------------------------------------------------- errors
def test_attach_errors(digits):
    with pytest.raises(HeterogradError, match="convert the model first"):
        attach(nn.Linear(3, 2), "harsh")
    model = _mlp("hsp")
    h = attach(model, "harsh")
    with pytest.raises(HeterogradError, match="already on devices"):
        attach(model, "harsh")
    h.detach()
    attach(model, "moderate")  # after detach it can be attached again
    with pytest.raises(HeterogradError, match="bogus"):
        attach(_mlp("hsp"), "harsh", bogus=1)
    with pytest.raises(HeterogradError, match="preset name only"):
        attach(_mlp("hsp"), DeviceModel(read_noise=0.1), levels=4)
    x = digits.x_train[:8]
    dfa = convert(nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)), "dfa", example_input=x)
    with pytest.raises(HeterogradError, match="dfa"):
        attach(dfa, "harsh")


def test_docs_example_runs(capsys):
    """The converted-model example of docs/hardware.md runs as printed and learns on the harsh device."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "hardware.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: hardware-attach -->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    exec(compile(block.group(1), "docs/hardware.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "2 layers on devices: read_noise=0.2" in out
    acc = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert acc > 0.8


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_quick_hardware_lenet_experiment_verdict(tmp_path):
    from heterograd.experiments import run_experiment
    from heterograd.experiments.hardware import compare

    s = run_experiment("hardware-lenet", tmp_path, quick=True)
    assert "error" not in s, s.get("traceback")
    m = s["measured"]
    assert set(m["loss_5_points_at"]) == {"read_noise", "levels", "asymmetry", "stuck_fraction"}
    assert s["holds"] == (not m["hsp_less_graceful"])
    for sweep, cmp in m["hsp_vs"].items():
        d = m["mean_loss_points"][sweep]
        for rival in ("bp", "fa"):
            assert cmp[rival] == compare(d["hsp"], d[rival])
    assert m["reference_accuracy"]["bp"] > 0.4  # LeNet learns on the reference device even in quick mode
    assert abs(m["align_reference"]["bp"] - 1) < 1e-4  # bp's probe reads: exact gradient
    assert (tmp_path / "hardware-lenet" / "hardware_lenet.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "hardware-lenet" / "hardware_lenet.md").is_file()
