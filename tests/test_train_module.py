"""``heterograd train --model``: converted nn.Modules in the training loop (ModuleTrainer), and ``repro convnets``."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch

from heterograd.checkpoint import load_checkpoint
from heterograd.cli import main
from heterograd.config import TrainConfig
from heterograd.data import load_dataset
from heterograd.errors import HeterogradError
from heterograd.experiments.convnets import judge
from heterograd.train import TrainingInterrupted
from heterograd.train_module import (
    TORCH_OPTIMIZERS,
    ModuleTrainer,
    cosine_lr,
    make_optimizer,
    parse_model_options,
    resume_trainer,
)
from learning_checks import freeze_hidden, plant_broken_transport

FACTORY = """
from torch import nn


def build(in_shape, num_classes, width=4):
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Flatten(),
        nn.Linear(width * h * w, num_classes),
    )


def not_a_model(in_shape, num_classes):
    return 3
"""


@pytest.fixture
def factory(tmp_path: Path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:build"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


SMALL = ["--data", "digits", "--epochs", "1", "--n-train", "256", "--n-test", "64", "--batch-size", "32"]


def _summary(path: Path) -> dict:
    s = json.loads((path / "summary.json").read_text())
    s.pop("wall_seconds")
    return s


def test_factory_model_writes_the_run_folder(capsys, tmp_path, factory):
    out = tmp_path / "run"
    argv = [*SMALL, "--model", factory, "--rule", "hsp", "--optimizer", "momentum", "--schedule", "cosine"]
    code, text, err = run_cli(capsys, "train", *argv, "--augment", "--no-progress", "--out", str(out))
    assert code == 0, err
    assert "hsp on digits" in text
    for f in ("config.json", "metrics.csv", "summary.json", "timing.json", "loss.png", "probes.png"):
        assert (out / f).is_file(), f
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"phi/0", "align/0", "phi/4", "dc_score", "test_accuracy"} <= set(header)
    s = _summary(out)
    assert s["model"] == factory and s["layers"] == ["0", "4"] and len(s["phi"]) == 2
    assert 0.0 <= s["test_accuracy"] <= 1.0 and not s["diverged"]
    assert s["phi"][1] == pytest.approx(1.0)  # the output layer's u is the error itself
    rec = json.loads((out / "config.json").read_text())
    assert rec["model"] == factory and rec["schedule"] == "cosine" and rec["augment"] is True


#: the done-check's run: LeNet-5 by hsp on 2,048 Fashion-MNIST images, 2 epochs of SGD with momentum (128 steps)
LENET = {"n_train": 2048, "n_test": 500, "epochs": 2, "batch_size": 32, "lr": 0.01, "optimizer": "momentum"}
#: "learns" means: test accuracy above the readout-only baseline (hidden layers frozen) by this much
LENET_MARGIN = 0.05


def lenet5_accuracy(mode: str) -> float:
    """Test accuracy of the :data:`LENET` run built as ``train --model lenet5`` builds it, with ``mode``
    ``readout`` (hidden layers frozen: the readout-only baseline, same data, seed and loop) or ``broken``
    (a planted zero transport; see ``learning_checks``)."""
    c = TrainConfig(model="lenet5", data="fashion-mnist", rule="hsp", probes=False, **LENET)  # type: ignore[arg-type]
    tr = ModuleTrainer(c)
    if mode == "readout":
        tr.optimizer = make_optimizer(c.optimizer, freeze_hidden(tr.model), c.lr, dict(c.optimizer_options))
    elif mode == "broken":
        plant_broken_transport(tr.model)
    else:
        raise AssertionError(mode)
    s = tr.fit(None, progress=False, handle_signals=False).summary
    assert not s["diverged"]
    return float(s["test_accuracy"])


def lenet5_learns(acc: float, readout: float) -> bool:
    """The check of the LeNet-5 done-check."""
    return acc > readout + LENET_MARGIN


@pytest.mark.needs_data("fashion-mnist")
def test_lenet5_on_fashion_mnist_from_the_command_line(capsys, tmp_path):
    """The issue's done-check, small: ``train --model lenet5 --data fashion-mnist --rule hsp`` learns: its test
    accuracy beats the readout-only baseline of the same run by :data:`LENET_MARGIN`."""
    out = tmp_path / "lenet"
    argv = ["--model", "lenet5", "--data", "fashion-mnist", "--rule", "hsp", "--log-every", "128"]
    argv += [x for k, v in LENET.items() for x in ("--" + k.replace("_", "-"), str(v))]
    code, _, err = run_cli(capsys, "train", *argv, "--no-progress", "--out", str(out))
    assert code == 0, err
    s = _summary(out)
    assert s["layers"] == ["conv1", "conv2", "fc1", "fc2", "fc3"] and s["steps"] == 128
    assert all(math.isfinite(v) for v in s["phi"])
    readout = lenet5_accuracy("readout")
    assert lenet5_learns(s["test_accuracy"], readout), (s["test_accuracy"], readout)


def test_config_json_with_model_reruns_it(capsys, tmp_path, factory):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = [*SMALL, "--model", factory, "--model-options", "width=3", "--rule", "kp", "--optimizer", "adam"]
    argv += ["--lr", "1e-3", "--schedule", "cosine", "--seed", "2", "--no-progress"]
    assert run_cli(capsys, "train", *argv, "--out", str(a))[0] == 0
    assert run_cli(capsys, "train", "--config", str(a / "config.json"), "--no-progress", "--out", str(b))[0] == 0
    assert _summary(a) == _summary(b)
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    rec = json.loads((b / "config.json").read_text())
    assert rec["model_options"] == {"width": 3} and rec["optimizer"] == "adam"


@pytest.mark.parametrize(("rule", "stop_at"), [("brsf", 7), ("hsp", 12), ("dfa", 9)])
def test_stop_and_resume_equals_uninterrupted(tmp_path, factory, digits, rule, stop_at):
    cfg = TrainConfig(data="digits", model=factory, rule=rule, epochs=2, n_train=256, n_test=64, batch_size=32,
                      optimizer="momentum", schedule="cosine", augment=True, probe_size=32, log_every=3)  # fmt: skip
    ref = ModuleTrainer(cfg, digits).fit(tmp_path / "ref", progress=False)
    tr = ModuleTrainer(cfg, digits)

    def stop(row: dict) -> None:
        if row["step"] >= stop_at:
            tr._stop_signal = signal.SIGINT

    with pytest.raises(TrainingInterrupted):
        tr.fit(tmp_path / "run", progress=False, on_log=stop)
    assert load_checkpoint(tmp_path / "run")["step"] < ref.summary["steps"]
    res = resume_trainer(tmp_path / "run", digits).fit(tmp_path / "run", progress=False)
    assert json.dumps(res.rows) == json.dumps(ref.rows)  # NaN cells (dfa has no angle) compare equal here
    for (k, a), (_, b) in zip(res.circuit.state_dict().items(), ref.circuit.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert _summary(tmp_path / "run") == _summary(tmp_path / "ref")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--topology", "sparse"], "--topology does not apply"),
        (["--density", "0.5"], "--density does not apply"),
        (["--activation", "relu"], "--activation does not apply"),
        (["--hidden", "64"], "--hidden does not apply"),
        (["--compile"], "--compile does not apply"),
        (["--device-model", "moderate"], "--device-model does not apply"),
        (["--theta-b", "0,1,0,0,0,0,0,0", "--rule", "poly"], "p·u term"),
        (["--loss", "mse"], "cross-entropy only"),
        (["--feedback-gain", "0.5", "--rule", "fa"], "--feedback-gain does not apply"),
        (["--feedback-init", "transpose", "--rule", "bp"], "feedback_init"),
        (["--rule", "freeze"], "Circuit engine only"),
        (["--optimizer", "adam", "--momentum", "0.9"], "has no option momentum"),
        (["--model-options", "nope=1"], "nope"),
        (["--model-options", "oops"], "not key=value"),
    ],
)
def test_options_that_do_not_apply_to_a_module_are_errors(capsys, tmp_path, extra, needle):
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--data", "digits", *extra, "--out", str(tmp_path))
    assert code == 2
    assert needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--schedule", "cosine"], "--schedule applies only to a converted model"),
        (["--augment"], "--augment applies only"),
        (["--model-options", "width=2"], "--model-options applies only"),
        (["--data", "sorting"], "--model transformer"),
        (["--model", "transformer", "--data", "digits"], "--data sorting"),
        (["--model", "lenet5", "--data", "sorting"], "--model transformer"),
        (["--model", "vgg"], "vgg"),
        (["--model", "nofile.py:build"], "no file nofile.py"),
        (["--model", "x.txt:build"], "FILE.py:FACTORY"),
        (["--model", "mlp", "--data", "teacher"], "regression"),
        (["--model", "mlp", "--data", "digits", "--augment"], "--augment needs images"),
    ],
)
def test_module_only_options_and_bad_models_are_errors(capsys, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, "train", *argv, "--epochs", "1", "--out", str(tmp_path / "x"))
    assert code == 2
    assert needle in err and err.count("\n") == 1, err


def test_factory_errors_name_the_problem(capsys, tmp_path, factory):
    path = factory.rpartition(":")[0]
    for spec, needle in ((f"{path}:missing", "no function 'missing'"), (f"{path}:not_a_model", "not an nn.Module")):
        code, _, err = run_cli(capsys, "train", *SMALL, "--model", spec, "--out", str(tmp_path / "x"))
        assert code == 2 and needle in err, err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    code, _, err = run_cli(capsys, "train", *SMALL, "--model", f"{broken}:f", "--out", str(tmp_path / "y"))
    assert code == 2 and "boom" in err


def test_mlp_takes_hidden_and_activation(digits):
    cfg = TrainConfig(data="digits", model="mlp", rule="fa", hidden=(16,), activation="relu", epochs=1, n_train=64,
                      probes=False)  # fmt: skip
    tr = ModuleTrainer(cfg, digits)
    widths = [m.out_features for m in tr.model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 10]


def test_transformer_on_the_sorting_task(tmp_path):
    cfg = TrainConfig(data="sorting", model="transformer", rule="hsp", epochs=1, n_train=128, n_test=64,
                      batch_size=32, model_options={"dim": 16, "layers": 1}, probe_size=16, optimizer="adam",
                      lr=3e-3)  # fmt: skip
    res = ModuleTrainer(cfg).fit(tmp_path / "t", progress=False)
    s = res.summary
    assert not s["diverged"] and 0.0 <= s["test_accuracy"] <= 1.0 and math.isfinite(s["test_loss"])
    assert any(n.endswith("qkv") for n in s["layers"])


def test_optimizers_map_to_torch_optim():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert type(make_optimizer("momentum", p, 0.1, {})).__name__ == "SGD"
    assert make_optimizer("momentum", p, 0.1, {}).param_groups[0]["momentum"] == 0.9
    assert make_optimizer("momentum", p, 0.1, {"nesterov": True}).param_groups[0]["nesterov"] is True
    assert make_optimizer("adamw", p, 0.1, {"weight_decay": 0.05}).param_groups[0]["weight_decay"] == 0.05
    assert make_optimizer("adam", p, 0.1, {"betas": [0.8, 0.9]}).param_groups[0]["betas"] == (0.8, 0.9)
    assert make_optimizer("rmsprop", p, 0.1, {"centered": True}).param_groups[0]["centered"] is True
    assert make_optimizer("sgd", p, 0.1, {}).param_groups[0]["weight_decay"] == 0  # λ is inside the rule's .grad
    assert set(TORCH_OPTIMIZERS) == {"sgd", "momentum", "rmsprop", "adam", "adamw"}
    with pytest.raises(HeterogradError, match="momentum"):
        make_optimizer("momentum", p, 0.1, {"momentum": -1.0})


def test_cosine_schedule_and_option_parsing():
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 10, 10) == pytest.approx(0.0)
    assert parse_model_options("activation=tanh,hidden=8:4,flag=true,x=0.5") == {
        "activation": "tanh",
        "hidden": [8, 4],
        "flag": True,
        "x": 0.5,
    }


def test_divergence_is_a_result(tmp_path, factory, digits):
    cfg = TrainConfig(data="digits", model=factory, rule="bp", epochs=1, n_train=256, lr=1e6, probe_size=16,
                      divergence_threshold=1e3, log_every=1)  # fmt: skip
    s = ModuleTrainer(cfg, digits).fit(tmp_path / "d", progress=False).summary
    assert s["diverged"] and s["diverged_reason"] and s["test_accuracy"] is None


# --------------------------------------------------------------------------- repro convnets: the verdict
def _errors(hsp: float, kp: float, fa: float = 14.0, dfa: float = 14.5) -> dict[str, list[float]]:
    base = {"bp": 9.0, "fa": fa, "dfa": dfa, "usf": 10.0, "brsf": 10.5, "frsf": 10.4, "kp": kp, "hsp": hsp}
    return {r: [v, v + 0.2, v - 0.2] for r, v in base.items()}


def test_convnets_verdict_holds_only_when_hsp_and_kp_beat_random_feedback():
    holds, comp = judge(_errors(9.5, 9.6), {})
    assert holds and comp["hsp"]["fa"] and comp["hsp"]["published FA"] and not comp["hsp"]["bp"]
    assert comp["hsp"]["published uSF"] is True and comp["hsp"]["published BP"] is False
    assert not judge(_errors(14.2, 9.6), {})[0]  # hsp worse than our fa
    assert not judge(_errors(13.5, 9.6, fa=15.0, dfa=15.0), {})[0]  # hsp worse than published FA 13.06
    assert not judge(_errors(9.5, 9.6), {"kp": 1})[0]  # a diverged kp run fails the claim
    nan = _errors(9.5, 9.6)
    nan["hsp"] = [math.nan] * 3  # every hsp run diverged
    assert not judge(nan, {"hsp": 3})[0]


@pytest.mark.parametrize("comparator", ["fa", "dfa"])
def test_convnets_a_diverged_comparator_is_not_beaten(comparator):
    errors = _errors(9.5, 9.6)
    errors[comparator] = [math.nan] * 3  # every run of our own fa (dfa) diverged
    holds, comp = judge(errors, {comparator: 3})
    assert not holds and comp["hsp"][comparator] is False and comp["kp"][comparator] is False
    errors[comparator] = [14.0, math.nan, 14.2]  # one diverged seed: the mean is NaN, the claim still fails
    assert not judge(errors, {comparator: 1})[0]
    assert not judge(errors, {})[0]  # the NaN alone fails it, whatever the counts say


def test_convnets_a_diverged_claimed_rule_fails_even_with_a_nan_comparator():
    errors = _errors(9.5, 9.6)
    errors["hsp"] = [math.nan, 9.4, 9.5]
    errors["fa"] = [math.nan] * 3
    assert not judge(errors, {"hsp": 1, "fa": 3})[0]
    assert not judge(errors, {})[0]


def test_convnets_quick_judges_only_our_own_rows():
    holds, comp = judge(_errors(13.5, 13.6, fa=15.0, dfa=15.0), {}, published=False)
    assert holds and comp["hsp"]["published FA"] is None  # not judged at this scale
    assert not judge(_errors(13.5, 13.6, fa=15.0, dfa=15.0), {})[0]  # full scale: published FA 13.06 judged


def test_experiment_helpers_count_a_nan_against_the_claim():
    from heterograd.experiments.base import diverged_count, mean_std

    m, sd = mean_std([9.0, math.nan, 9.2])
    assert math.isnan(m) and math.isnan(sd) and diverged_count([9.0, math.nan, None]) == 2
    assert not (m < 100.0) and not (m > 0.0)  # a NaN mean fails every threshold, in either direction
    assert math.isnan(mean_std([])[0])


def test_convnets_targets_fail_on_nan():
    from heterograd.experiments.convnets import targets

    lenet = {r: {"test_error_pct": 9.0, "diverged": 0, "hyperparameters": {"lr": 0.01}} for r in
             ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "hsp")}  # fmt: skip
    lenet["hsp"]["hyperparameters"]["feedback_gain"] = 0.7
    assert all(t["met"] for t in targets(lenet))
    lenet["dfa"] = {"test_error_pct": math.nan, "diverged": 3, "hyperparameters": {}}
    lenet["kp"]["test_error_pct"] = 9.6  # above bp + 0.5
    met = {t["target"].split()[0]: t["met"] for t in targets(lenet)}
    assert not met["DFA"] and not met["KP"] and met["FA"]


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_convnets_quick_mode_verdict(tmp_path):
    from heterograd.experiments import run_experiment

    s = run_experiment("convnets", tmp_path, quick=True)
    assert "error" not in s, s.get("traceback")
    m = s["measured"]
    assert set(m["lenet5"]) == {"bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "hsp"}
    assert all(v["hyperparameters"]["lr"] > 0 for v in m["lenet5"].values())
    assert "feedback_gain" in m["lenet5"]["hsp"]["hyperparameters"]
    holds, _ = judge(
        {r: v["errors"] for r, v in m["lenet5"].items()},
        {r: v["diverged"] for r, v in m["lenet5"].items()},
        published=False,
    )
    assert s["holds"] == holds
    assert m["lenet5"]["bp"]["phi"]["conv1"] == pytest.approx(1.0, abs=1e-4)  # backprop's feedback is the gradient
    text = (tmp_path / "convnets" / "convnets.md").read_text()
    assert text.count("| HSP |") == 3  # LeNet-5 errors, per-layer probes, tuning
    assert "not judged" in text and "Sanfiz & Akrout 2021" in text
    for fig in s["figures"]:
        assert (tmp_path / "convnets" / fig).stat().st_size > 1000
