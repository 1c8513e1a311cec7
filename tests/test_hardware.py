"""Device models (issue 14): each non-ideality does what its docstring says; the ideal device changes nothing."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from heterograd.circuits import Circuit
from heterograd.errors import HeterogradError
from heterograd.experiments.hardware import compare, loss_crossing
from heterograd.hardware import (
    PRESETS,
    DeviceArray,
    DeviceModel,
    HardwareCircuit,
    TransposedReadBP,
    make_device_model,
    parse_device_options,
)
from heterograd.losses import get_loss
from heterograd.optim import make_motif
from heterograd.rules import BP, HSP
from heterograd.train import TrainConfig, Trainer, apply_steps, local_step


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _array(model: DeviceModel, shape=(50, 40), scale: float = 1.0, seed: int = 0, like=None) -> DeviceArray:
    like = torch.zeros(shape) if like is None else like
    return DeviceArray(model, like, scale, _gen(seed))


# --------------------------------------------------------------------------- ideal == plain, bit for bit
def _fit(digits, **kw) -> Trainer:
    cfg = TrainConfig(data="digits", epochs=2, hidden=(32, 16), n_train=300, n_test=100, probe_size=64, **kw)
    tr = Trainer(cfg, digits)
    tr.fit(progress=False)
    return tr


@pytest.mark.parametrize("rule", ["bp", "fa", "hsp"])
def test_ideal_preset_equals_plain_run_bit_for_bit(digits, rule):
    plain = _fit(digits, rule=rule)
    ideal = _fit(digits, rule=rule, device_model="ideal")
    assert ideal.hardware is None
    for a, b in zip(plain.circuit.plastic_tensors(), ideal.circuit.plastic_tensors(), strict=True):
        assert torch.equal(a, b)
    assert plain.rows == ideal.rows


def test_device_path_with_ideal_model_equals_plain_steps_bit_for_bit(digits):
    """Forcing the device path with an ideal model (reads, writes through the arrays) changes nothing."""
    loss = get_loss("ce")
    x, y = digits.x_train[:64], digits.y_train[:64]
    runs = []
    for attach in (False, True):
        c = Circuit([64, 32, 16, 10], seed=3)
        hw = HardwareCircuit(c, DeviceModel(), seed=0) if attach else None
        rule, motif = HSP(weight_decay=1e-3), make_motif("sgd", lr=0.05)
        st, ms = rule.init(c), motif.init(c.plastic_tensors())
        for i in range(5):
            xb, yb = x[i * 8 : i * 8 + 8], y[i * 8 : i * 8 + 8]
            if hw is None:
                out = local_step(c, rule, st, loss, xb, yb)
            else:
                with hw.noisy_reads():
                    out = local_step(c, rule, st, loss, xb, yb)
            steps, ms = motif.update(out.deltas.flat(), ms, c.plastic_tensors())
            apply_steps(c, steps, hw)
        runs.append([t.clone() for t in c.plastic_tensors()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_bp_on_a_noiseless_device_is_backprop(digits, float64):
    """bp's feedback on a device is the transposed read of W: without read noise, exactly autograd's backprop."""
    from heterograd.autodiff import potential_gradients

    loss = get_loss("ce")
    c = Circuit([64, 32, 16, 10], seed=1, dtype=torch.float64)
    x, y = digits.x_train[:32].double(), digits.y_train[:32]
    expected = potential_gradients(c, x, y, loss)
    HardwareCircuit(c, DeviceModel(w_range=4.0, asymmetry=0.2), seed=0, transposed_feedback=True)
    out = local_step(c, TransposedReadBP(BP()), None, loss, x, y)
    for l in range(1, c.depth + 1):
        torch.testing.assert_close(out.u[l], expected[l], rtol=1e-12, atol=1e-12)


def test_bp_on_a_device_needs_the_layered_topology():
    c = Circuit([8, 6, 6, 3], topology="direct", seed=0)
    with pytest.raises(HeterogradError, match="layered"):
        HardwareCircuit(c, DeviceModel(read_noise=0.1), seed=0, transposed_feedback=True)


# --------------------------------------------------------------------------- each non-ideality
def test_four_level_grid_only_takes_four_values():
    arr = _array(DeviceModel(w_range=1.0, levels=4))
    W = arr.program(torch.empty(50, 40).uniform_(-2, 2, generator=_gen(1)))
    g = _gen(2)
    seen = set()
    for _ in range(30):
        W = arr.apply_update(W, 0.5 * torch.randn(W.shape, generator=g), g)
        seen |= {round(v, 6) for v in W.unique().tolist()}
    assert seen <= {-1.0, round(-1 / 3, 6), round(1 / 3, 6), 1.0}
    assert len(seen) == 4


def test_asymmetric_soft_bounded_device_drifts_as_the_closed_form_predicts():
    """Alternating +/- single pulses: w_{2k} = w* + (w_0 - w*) r^k with the pair map's fixed point w*."""
    M, dw, a = 1.0, 0.05, 0.3
    arr = _array(DeviceModel(w_range=M, pulse_step=dw, asymmetry=a), shape=(3,))
    W = torch.tensor([-0.5, 0.0, 0.7], dtype=torch.float64)
    w0 = W.clone()
    ap, am = dw * (1 + a), dw * (1 - a)
    r = (1 - ap / M) * (1 - am / M)
    w_star = (ap * (1 - am / M) - am) / (ap / M + am / M - ap * am / (M * M))
    g = _gen(0)
    step = torch.full((3,), dw, dtype=torch.float64)  # exactly one pulse each time
    for k in range(1, 201):
        W = arr.apply_update(W, step, g)
        W = arr.apply_update(W, -step, g)
        expected = w_star + (w0 - w_star) * r**k
        torch.testing.assert_close(W, expected, rtol=0, atol=1e-12)
    assert abs(w_star - a * M) < 0.05  # ≈ a w_max for small steps
    assert float((W - w_star).abs().max()) < 1e-3  # drifted to the fixed point, not back to w_0


def test_pulse_trains_follow_the_n_pulse_closed_form_and_analog_limit():
    M, dw, a = 2.0, 0.1, 0.2
    arr = _array(DeviceModel(w_range=M, pulse_step=dw, asymmetry=a), shape=(2,))
    W = torch.tensor([0.3, 0.3], dtype=torch.float64)
    out = arr.apply_update(W, torch.tensor([5 * dw, -7 * dw], dtype=torch.float64), _gen())
    ap, am = dw * (1 + a), dw * (1 - a)
    up = M - (M - 0.3) * (1 - ap / M) ** 5
    down = -M + (0.3 + M) * (1 - am / M) ** 7
    torch.testing.assert_close(out, torch.tensor([up, down], dtype=torch.float64), rtol=0, atol=1e-12)
    analog = _array(DeviceModel(w_range=M, asymmetry=a), shape=(2,))
    out = analog.apply_update(W, torch.tensor([0.5, -0.5], dtype=torch.float64), _gen())
    up = M - (M - 0.3) * math.exp(-0.5 * (1 + a) / M)
    down = -M + (0.3 + M) * math.exp(-0.5 * (1 - a) / M)
    torch.testing.assert_close(out, torch.tensor([up, down], dtype=torch.float64), rtol=0, atol=1e-12)


def test_stochastic_pulse_counts_are_unbiased_and_nearest_loses_small_updates():
    model = DeviceModel(pulse_step=0.1)  # unbounded: one pulse moves 0.1 exactly
    W = torch.zeros(200_000, dtype=torch.float64)
    step = torch.full_like(W, 0.03)  # 0.3 of a pulse
    out = _array(model, shape=W.shape).apply_update(W, step, _gen())
    assert set(out.unique().tolist()) <= {0.0, 0.1}
    assert abs(float(out.mean()) - 0.03) < 5e-4
    nearest = DeviceModel(pulse_step=0.1, rounding="nearest")
    assert torch.equal(_array(nearest, shape=W.shape).apply_update(W, step, _gen()), W)


def test_read_noise_has_the_configured_std_and_fresh_draws():
    arr = _array(DeviceModel(read_noise=0.2), shape=(500, 400), scale=0.5)
    W = torch.zeros(500, 400)
    g = _gen(4)
    r1, r2 = arr.read(W, g), arr.read(W, g)
    assert abs(float(r1.std()) - 0.1) < 0.002 and abs(float(r1.mean())) < 0.002
    assert abs(float(torch.corrcoef(torch.stack([r1.flatten(), r2.flatten()]))[0, 1])) < 0.01
    assert not torch.equal(arr.read(W, g), W)
    w = W[0]
    assert _array(DeviceModel(), shape=w.shape).read(w, g) is w  # noiseless: the stored tensor itself


@pytest.mark.parametrize("bp_mode", [False, True])
def test_forward_and_feedback_reads_are_independent(bp_mode):
    """Noise on the forward read of W and on the feedback read (of B, or of W again for bp) is independent."""
    c = Circuit([300, 200, 10], seed=0, feedback_init="transpose")
    hw = HardwareCircuit(c, DeviceModel(read_noise=0.5), seed=0, transposed_feedback=bp_mode)
    Ws, bs = list(c.W), list(c.b)
    with hw.noisy_reads():
        Wr, _ = hw.read_forward(Ws, bs)
        Br = hw.read_feedback(c, list(c.B))
    assert Br[0].shape == (200, 10)
    fwd_noise = (Wr[1] - Ws[1]).t()  # W_2 (10, 200) -> (200, 10), the place B_1 mirrors
    fb_noise = Br[0] - (Ws[1].t() if bp_mode else c.B[0])
    s = 0.5 / math.sqrt(200)
    assert abs(float(fb_noise.std()) / s - 1) < 0.05 and abs(float(fwd_noise.std()) / s - 1) < 0.05
    corr = float(torch.corrcoef(torch.stack([fwd_noise.flatten(), fb_noise.flatten()]))[0, 1])
    assert abs(corr) < 0.05
    # outside the training step reads are noiseless
    assert hw.read_forward(Ws, bs)[0] is Ws


def test_stuck_devices_never_change():
    model = DeviceModel(w_range=2.0, stuck_fraction=0.3, c2c=0.2, asymmetry=0.1)
    like = torch.empty(60, 50).uniform_(-1, 1, generator=_gen(5))
    arr = _array(model, like=like)
    assert arr.stuck is not None and 0.25 < float(arr.stuck.float().mean()) < 0.35
    W = arr.program(like)
    stuck_vals = W[arr.stuck].clone()
    free_before = W[~arr.stuck].clone()
    g = _gen(6)
    for _ in range(20):
        W = arr.apply_update(W, 0.3 * torch.randn(W.shape, generator=g), g)
        assert torch.equal(W[arr.stuck], stuck_vals)
    assert not torch.equal(W[~arr.stuck], free_before)
    init = _array(DeviceModel(stuck_fraction=0.5, stuck_at="init"), like=like)
    assert torch.equal(init.program(like), like)


def test_device_to_device_variation_is_fixed_and_reproducible_by_seed():
    model = DeviceModel(w_range=2.0, d2d=0.3)
    a, b, other = _array(model, seed=1), _array(model, seed=1), _array(model, seed=2)
    for name in ("alpha_plus", "alpha_minus", "w_max", "w_min"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(other, name))
    assert float(a.alpha_plus.std()) > 0.2
    # fixed across steps: the same request from the same state gives the same response, step after step
    W = torch.zeros(50, 40)
    step = torch.full((50, 40), 0.1)
    first = a.apply_update(W, step, _gen())
    for _ in range(5):
        a.apply_update(first, step, _gen())
    assert torch.equal(a.apply_update(W, step, _gen()), first)
    assert not torch.equal(first, _array(model, seed=2).apply_update(W, step, _gen()))


def test_device_run_is_reproducible_and_harsh_changes_the_run(digits):
    a = _fit(digits, rule="hsp", device_model="harsh")
    b = _fit(digits, rule="hsp", device_model="harsh")
    plain = _fit(digits, rule="hsp")
    for x, y in zip(a.circuit.plastic_tensors(), b.circuit.plastic_tensors(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.circuit.W[0], plain.circuit.W[0])
    W = a.circuit.W[0]  # 64 states in ±3 s per device, s = 1/8: every weight within its device's bounds
    assert float(W.abs().max()) <= 3 / 8 * (1 + 0.3 * 6)


def test_resume_on_a_device_equals_an_uninterrupted_run(digits, tmp_path):
    cfg = TrainConfig(
        data="digits", epochs=2, hidden=(16,), n_train=200, n_test=50, probe_size=32, device_model="moderate"
    )
    full = Trainer(cfg, digits)
    full.fit(progress=False)
    part = Trainer(TrainConfig(**{**cfg.to_dict(), "epochs": 1}), digits)
    part.fit(tmp_path, progress=False)
    part.save_checkpoint(tmp_path)
    resumed = Trainer.resume(tmp_path, digits, epochs=2)
    resumed.fit(tmp_path, progress=False)
    for x, y in zip(full.circuit.plastic_tensors(), resumed.circuit.plastic_tensors(), strict=True):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------- configuration and CLI
def test_presets_and_options():
    assert PRESETS["ideal"].is_ideal and not PRESETS["moderate"].is_ideal and not PRESETS["harsh"].is_ideal
    m = make_device_model("harsh", parse_device_options("read_noise=0.5, levels=16,stuck_at=init,pulse_step=auto"))
    assert (m.read_noise, m.levels, m.stuck_at, m.pulse_step, m.asymmetry) == (0.5, 16, "init", None, 0.4)
    assert make_device_model("ideal", parse_device_options("w_range=inf")).is_ideal


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("superb", {}, "unknown device model 'superb'; valid choices: harsh, ideal, moderate"),
        ("harsh", {"noise": 1}, "unknown device option 'noise'; valid choices: asymmetry, c2c"),
        ("ideal", {"levels": 1}, "levels must be 0 (analog) or an integer >= 2"),
        ("ideal", {"levels": 8}, "levels needs finite bounds"),
        ("ideal", {"asymmetry": 1.5}, "asymmetry must be in (-1, 1)"),
        ("ideal", {"read_noise": -0.1}, "read_noise must be in [0, inf]"),
        ("ideal", {"stuck_fraction": 2}, "stuck_fraction must be in [0, 1]"),
        ("ideal", {"stuck_at": "zero"}, "unknown device option stuck_at 'zero'"),
        ("ideal", {"read_noise": "loud"}, "read_noise must be a number"),
    ],
)
def test_bad_device_model_is_one_clear_error(name, options, needle):
    with pytest.raises(HeterogradError, match=re.escape(needle)):
        TrainConfig(device_model=name, device_model_options=options).validate()


def test_device_model_with_compile_or_bad_options_type_is_an_error():
    with pytest.raises(HeterogradError, match="--compile does not support a device model"):
        TrainConfig(device_model="moderate", compile=True).validate()
    with pytest.raises(HeterogradError, match="device_model_options must be a dict"):
        TrainConfig(device_model_options="read_noise=1").validate()  # type: ignore[arg-type]
    with pytest.raises(HeterogradError, match="not key=value"):
        parse_device_options("read_noise")


def test_cli_trains_hsp_on_the_harsh_device(capsys, tmp_path):
    from heterograd.cli import main

    out = tmp_path / "run"
    argv = ["train", "--rule", "hsp", "--device-model", "harsh", "--device-model-options", "read_noise=0.1"]
    argv += ["--epochs", "1", "--n-train", "200", "--n-test", "50", "--hidden", "16", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--no-progress"])
        raise SystemExit(0)
    assert int(exc.value.code or 0) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["device_model"] == "harsh" and cfg["device_model_options"] == {"read_noise": 0.1}
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] is not None


def test_cli_unknown_device_model_is_one_line_exit_2(capsys, tmp_path):
    from heterograd.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--device-model", "shiny", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown device model 'shiny'; valid choices: harsh, ideal, moderate" in err[0]


# --------------------------------------------------------------------------- the experiment's verdict
def test_loss_crossing_and_comparison_can_go_either_way():
    assert loss_crossing([0, 1, 2], [0, 2, 8]) == pytest.approx(1.5)
    assert loss_crossing([0, 1, 2], [0, 1, 4]) is None
    assert loss_crossing([0, 1], [6, 9]) == 0
    assert compare(2.0, 5.0) == "more graceful"
    assert compare(5.0, 2.0) == "less graceful"
    assert compare(2.5, 2.0) == "alike"


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_quick_hardware_experiment_verdict(tmp_path):
    from heterograd.experiments import run_experiment

    s = run_experiment("hardware", tmp_path, quick=True)
    assert "error" not in s, s.get("traceback")
    m = s["measured"]
    assert set(m["loss_5_points_at"]) == {"read_noise", "levels", "asymmetry", "stuck_fraction"}
    assert s["holds"] == (not m["hsp_less_graceful"])
    for sweep, cmp in m["hsp_vs"].items():
        d = m["mean_loss_points"][sweep]
        for rival in ("bp", "fa"):
            assert cmp[rival] == compare(d["hsp"], d[rival])
    assert m["reference_accuracy"]["bp"] > 0.5  # the circuit learns on the reference device
    assert m["stuck_case"]["as_predicted"], m["stuck_case"]  # hsp's align falls with stuck devices, bp's stays 1
    assert m["runs_per_point"]["bp_array"] == 1 and set(m["hsp_vs_bp_array"]) == set(m["hsp_vs"])
    for fig in s["figures"]:
        assert (tmp_path / "hardware" / fig).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "hardware" / "hardware.md").is_file()
