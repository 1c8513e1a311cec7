"""Feedback through normalisation layers: ``convert(..., norm_feedback="exact" | "local")``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heterograd import HeterogradError, convert, probe
from heterograd.cli import main
from heterograd.config import TrainConfig


def _norm(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    if kind == "batch":
        return nn.BatchNorm2d(3), (6, 3, 4, 4)
    if kind == "layer":
        return nn.LayerNorm([5]), (6, 3, 5)
    return nn.GroupNorm(1, 3), (6, 3, 4, 4)


def _local_feedback(ref: nn.Module, x: torch.Tensor, g: torch.Tensor, training: bool = True) -> torch.Tensor:
    """``g ⊙ γ/σ`` with ``σ`` the one the layer divides by (written out independently of the library)."""
    eps = ref.eps  # type: ignore[attr-defined]
    if isinstance(ref, nn.BatchNorm2d):
        var = x.var(dim=(0, 2, 3), unbiased=False) if training else ref.running_var
        assert var is not None
        return g * (ref.weight / torch.sqrt(var + eps)).view(1, -1, 1, 1)
    if isinstance(ref, nn.LayerNorm):
        return g * ref.weight / torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)
    var = x.reshape(x.shape[0], -1).var(dim=1, unbiased=False).view(-1, 1, 1, 1)
    return g * ref.weight.view(1, -1, 1, 1) / torch.sqrt(var + eps)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["batch", "layer", "group"])
@pytest.mark.parametrize("mode", ["exact", "local"])
def test_feedback_through_norm_layers(float64, kind, mode):
    """exact: torch's own derivative (through the statistics); local: γ/σ per channel; γ, β learn alike."""
    norm, shape = _norm(kind)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))  # type: ignore[union-attr]
    ref = nn.Sequential(norm)
    model = nn.Sequential(type(norm)(*_args(norm)))
    model.load_state_dict(ref.state_dict())
    convert(model, "kp", weight_decay=0.0, norm_feedback=mode)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(shape, generator=gen)
    (model(x) * g).sum().backward()
    (ref(x_ref) * g).sum().backward()
    expected = x_ref.grad if mode == "exact" else _local_feedback(norm, x.detach(), g)
    assert torch.allclose(x.grad, expected, atol=1e-10)
    if mode == "local":
        assert not torch.allclose(x.grad, x_ref.grad, atol=1e-3)  # the two modes differ
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-10), n  # γ, β: the same local rule in both modes


def _args(norm: nn.Module) -> tuple:
    if isinstance(norm, nn.BatchNorm2d):
        return (norm.num_features,)
    if isinstance(norm, nn.LayerNorm):
        return (list(norm.normalized_shape),)
    assert isinstance(norm, nn.GroupNorm)
    return (norm.num_groups, norm.num_channels)


def test_local_batchnorm_feedback_does_not_couple_samples(float64):
    """exact couples the samples through the batch statistics; local gives zero feedback where u is zero."""
    out = {}
    for mode in ("exact", "local"):
        torch.manual_seed(0)
        model = convert(nn.Sequential(nn.BatchNorm2d(3)), "fa", norm_feedback=mode)
        x = torch.randn(4, 3, 5, 5, requires_grad=True)
        g = torch.zeros(4, 3, 5, 5)
        g[1] = 1.0 + torch.rand(3, 5, 5)  # feedback for sample 1 only
        (model(x) * g).sum().backward()
        out[mode] = x.grad
    assert out["exact"][0].abs().sum() > 1e-3  # sample 0 gets feedback meant for sample 1
    assert torch.count_nonzero(out["local"][[0, 2, 3]]) == 0
    assert out["local"][1].abs().sum() > 0


def test_local_batchnorm_in_eval_mode_uses_the_running_sigma(float64):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 3.0)
        bn.weight.uniform_(0.5, 2.0)
    model = convert(nn.Sequential(bn), "hsp", norm_feedback="local").eval()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    g = torch.randn(4, 3, 5, 5)
    (model(x) * g).sum().backward()
    assert torch.allclose(x.grad, _local_feedback(bn, x.detach(), g, training=False), atol=1e-12)


def test_probes_measure_against_the_exact_gradient():
    """bp with local norm feedback is not backprop: the probe's true-gradient pass stays exact and shows it."""
    align = {}
    for mode in ("exact", "local"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        convert(net, "bp", norm_feedback=mode)
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
        align[mode] = probe(net, x, y, F.cross_entropy).layers["0"]["align"]
    assert align["exact"] == pytest.approx(1.0, abs=1e-5)
    assert align["local"] < 0.999


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"norm_feedback": "batch"}, "unknown norm feedback 'batch'; valid choices: exact, local"),
        ({"norm_feedback": "local", "model": nn.Sequential(nn.Linear(3, 2))}, "has none with trainable parameters"),
    ],
)
def test_norm_feedback_errors(kwargs, needle):
    model = kwargs.pop("model", nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    with pytest.raises(HeterogradError) as exc:
        convert(model, "fa", **kwargs)
    assert needle in str(exc.value)


@pytest.mark.needs_data("fashion-mnist")  # the LeNet-5 run reads the data before the option check
def test_norm_feedback_from_the_command_line(capsys, tmp_path):
    def run(*argv: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exc:
            main(["train", *argv, "--no-progress"])
            raise SystemExit(0)
        return int(exc.value.code or 0), capsys.readouterr().err

    code, err = run("--norm-feedback", "local", "--epochs", "1", "--out", str(tmp_path / "a"))
    assert code == 2 and "--norm-feedback applies only to a converted model" in err
    code, err = run("--model", "lenet5", "--data", "fashion-mnist", "--norm-feedback", "local", "--out", str(tmp_path))
    assert code == 2 and "norm_feedback='local'" in err and "has none" in err  # LeNet-5 has no norm layer
    code, err = run("--model", "mlp", "--norm-feedback", "batch", "--out", str(tmp_path / "b"))
    assert code == 2 and "unknown norm feedback 'batch'" in err
    assert TrainConfig(model="resnet20", norm_feedback="local").validate().norm_feedback == "local"
