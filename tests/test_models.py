"""Tests for heterograd.models: shapes, parameter counts, shortcuts, seeding, layer types, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heterograd.errors import HeterogradError
from heterograd.models import (
    MODELS,
    BasicBlock,
    ResNet,
    ZeroPadShortcut,
    count_parameters,
    lenet5,
    make_model,
    mlp,
    resnet,
    resnet20,
    resnet56,
)

#: Layers a converter must handle; every parameter lives in one of them.
PARAMETRISED = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
#: Parameter-free modules the models may use besides containers.
PARAMETER_FREE = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    ZeroPadShortcut,
)

CASES = [
    ("mlp", (1, 28, 28), {}),
    ("mlp", (40,), {"hidden": (32,), "activation": "tanh"}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (3, 32, 32), {"activation": "tanh", "pooling": "avg"}),
    ("resnet20", (3, 32, 32), {}),
    ("resnet20", (1, 28, 28), {"shortcut": "B"}),
    ("resnet56", (3, 32, 32), {"shortcut": "A"}),
]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("name", "shape", "options"), CASES)
def test_registry_models_map_a_batch_to_logits(name, shape, options):
    model = make_model(name, shape, 7, seed=1, **options)
    model.eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_registry_lists_the_zoo():
    assert {"mlp", "lenet5", "resnet20", "resnet56"} <= set(MODELS)
    for entry in MODELS.values():
        assert entry.summary and callable(entry.build)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: lenet5((1, 28, 28)), 61_706),
        (lambda: lenet5((3, 32, 32)), 62_006),
        (lambda: mlp([784, 256, 256, 10]), 269_322),
        (lambda: resnet20((3, 32, 32)), 269_722),
        (lambda: resnet20((3, 32, 32), shortcut="B"), 272_474),
        (lambda: resnet20((1, 28, 28)), 269_434),
        (lambda: resnet56((3, 32, 32)), 853_018),
        (lambda: resnet56((3, 32, 32), shortcut="B"), 855_770),
        (lambda: resnet56((1, 32, 32), shortcut="B"), 855_482),
    ],
)
def test_parameter_counts_match_the_docstrings(build, expected):
    assert count_parameters(build()) == expected


def test_lenet5_layout_and_padding():
    small, big = lenet5((1, 28, 28)), lenet5((3, 32, 32))
    assert small.conv1.padding == (2, 2) and big.conv1.padding == (0, 0)
    assert small.conv1.in_channels == 1 and big.conv1.in_channels == 3
    x = torch.randn(2, 1, 28, 28)
    after_pool2 = small[:6](x)  # conv1 act1 pool1 conv2 act2 pool2
    assert after_pool2.shape == (2, 16, 5, 5)
    assert isinstance(lenet5(activation="tanh").act1, nn.Tanh)
    assert isinstance(lenet5(pooling="avg").pool1, nn.AvgPool2d)
    assert isinstance(lenet5().pool1, nn.MaxPool2d) and isinstance(lenet5().act1, nn.ReLU)


def test_resnet_layout():
    model = resnet20((3, 32, 32))
    assert isinstance(model, ResNet) and model.depth == 20
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [3, 3, 3]
    assert [len(s) for s in (resnet56().layer1, resnet56().layer2, resnet56().layer3)] == [9, 9, 9]
    assert resnet(32).depth == 32
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    h1 = model.layer1(model.relu(model.bn(model.conv(x))))
    h2 = model.layer2(h1)
    h3 = model.layer3(h2)
    assert h1.shape == (2, 16, 32, 32) and h2.shape == (2, 32, 16, 16) and h3.shape == (2, 64, 8, 8)


def test_shortcut_options_differ_only_where_the_shape_changes():
    a, b = resnet20(shortcut="A"), resnet20(shortcut="B")
    for model, kind in ((a, ZeroPadShortcut), (b, nn.Sequential)):
        firsts = [model.layer2[0].shortcut, model.layer3[0].shortcut]
        assert all(isinstance(s, kind) for s in firsts)
        others = [blk.shortcut for layer in (model.layer1, model.layer2, model.layer3) for blk in layer]
        others = [s for s in others if s not in firsts]
        assert len(others) == 7 and all(isinstance(s, nn.Identity) for s in others)
    proj = b.layer2[0].shortcut
    assert isinstance(proj[0], nn.Conv2d) and proj[0].kernel_size == (1, 1) and proj[0].stride == (2, 2)
    assert isinstance(proj[1], nn.BatchNorm2d)
    assert sum(p.numel() for p in a.layer2[0].shortcut.parameters()) == 0
    # With the same seed the two options share every weight outside the projections.
    sa, sb = state(resnet20(shortcut="A", seed=3)), state(resnet20(shortcut="B", seed=3))
    assert set(sb) - set(sa) and all(".shortcut." in k for k in set(sb) - set(sa))
    assert sa.keys() <= sb.keys()


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 4, 7, 6)
    out = ZeroPadShortcut(4, 10, 2)(x)
    assert out.shape == (2, 10, 4, 3)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 4:]) == 0
    with pytest.raises(HeterogradError):
        ZeroPadShortcut(8, 4, 2)


@pytest.mark.parametrize(("name", "shape", "options"), CASES)
def test_every_parameter_sits_in_a_linear_conv_or_norm_layer(name, shape, options):
    model = make_model(name, shape, 10, **options)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            assert isinstance(module, PARAMETRISED), f"{type(module).__name__} holds parameters"
        elif not list(module.children()):
            assert isinstance(module, PARAMETER_FREE), f"unexpected leaf {type(module).__name__}"
    n_owned = sum(p.numel() for m in model.modules() if isinstance(m, PARAMETRISED) for p in m.parameters(False))
    assert n_owned == count_parameters(model)


@pytest.mark.parametrize(("name", "shape", "options"), CASES)
def test_seeded_construction_is_reproducible_and_leaves_the_global_rng_alone(name, shape, options):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one = state(make_model(name, shape, 10, seed=5, **options))
    assert torch.equal(torch.get_rng_state(), before)
    two = state(make_model(name, shape, 10, seed=5, **options))
    other = state(make_model(name, shape, 10, seed=6, **options))
    via_gen = state(make_model(name, shape, 10, generator=torch.Generator().manual_seed(5), **options))
    assert all(torch.equal(one[k], two[k]) and torch.equal(one[k], via_gen[k]) for k in one)
    weights = [k for k in one if k.endswith("weight") and one[k].ndim > 1]
    assert weights and all(not torch.equal(one[k], other[k]) for k in weights)
    default, zero = state(make_model(name, shape, 10, **options)), state(make_model(name, shape, 10, seed=0, **options))
    assert all(torch.equal(default[k], zero[k]) for k in default)


def test_kaiming_init_scale_and_zero_biases():
    model = resnet56(seed=0)
    conv = model.layer3[4].conv2  # 64 * 9 = 576 fan-in
    assert abs(float(conv.weight.detach().std()) - (2 / 576) ** 0.5) < 0.05 * (2 / 576) ** 0.5
    net = lenet5(seed=0)
    assert abs(float(net.fc1.weight.detach().std()) - (2 / 400) ** 0.5) < 0.05 * (2 / 400) ** 0.5
    assert abs(float(net.fc3.weight.detach().std()) - (1 / 84) ** 0.5) < 0.15 * (1 / 84) ** 0.5
    assert all(torch.count_nonzero(m.bias) == 0 for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    tanh = lenet5(activation="tanh", seed=0)
    assert abs(float(tanh.fc1.weight.detach().std()) - 5 / 3 * (1 / 400) ** 0.5) < 0.05 * 5 / 3 * (1 / 400) ** 0.5


def test_lenet5_learns_a_tiny_batch_with_autograd():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 28, 28, generator=gen)
    y = torch.arange(16) % 10
    model = lenet5(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_resnet20_learns_a_tiny_batch_with_autograd():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    y = torch.arange(8) % 4
    model = resnet20((3, 16, 16), 4, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "shape", "options"), CASES)
def test_models_run_forward_in_float32_and_float64(name, shape, options, dtype):
    model = make_model(name, shape, 10, seed=0, **options).to(dtype)
    model.eval()
    out = model(torch.randn(2, *shape, dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 10) and torch.isfinite(out).all()


def test_float64_and_float32_agree():
    model = make_model("resnet20", (3, 32, 32), 10, seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    out32 = model(x)
    out64 = model.to(torch.float64)(x.double())
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: make_model("vgg16", (3, 32, 32), 10), "unknown model 'vgg16'; valid choices: lenet5, mlp"),
        (lambda: make_model("lenet5", (1, 20, 20), 10), "28x28 or 32x32"),
        (lambda: make_model("lenet5", (784,), 10), "in_shape must be (C, H, W)"),
        (lambda: make_model("resnet20", (28, 28), 10), "in_shape must be (C, H, W)"),
        (lambda: make_model("lenet5", (1, 28, 28), 10, shortcut="B"), "do not apply to model 'lenet5'"),
        (lambda: make_model("resnet20", (3, 32, 32), 10, activation="tanh"), "it takes shortcut"),
        (lambda: make_model("resnet20", (3, 32, 32), 10, shortcut="C"), "unknown shortcut option 'C'"),
        (lambda: make_model("lenet5", (1, 28, 28), 10, pooling="median"), "unknown pooling 'median'"),
        (lambda: make_model("mlp", (40,), 10, activation="swish"), "unknown activation 'swish'"),
        (lambda: make_model("mlp", (0, 3), 10), "positive ints"),
        (lambda: make_model("mlp", (40,), 0), "num_classes must be an integer >= 1"),
        (lambda: make_model("mlp", (40,), 10, seed=1, generator=torch.Generator()), "not both"),
        (lambda: make_model("mlp", (40,), 10, seed=-1), "seed must be an integer"),
        (lambda: resnet(21), "depth 6n + 2"),
        (lambda: BasicBlock(16, 32, 2, "a"), "unknown shortcut option 'a'"),
        (lambda: mlp([10]), "at least an input and an output"),
    ],
)
def test_bad_requests_raise_one_clear_line(call, fragment):
    with pytest.raises(HeterogradError) as excinfo:
        call()
    message = str(excinfo.value)
    assert fragment in message and "\n" not in message
