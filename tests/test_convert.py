"""Converted torch.nn models: equivalence with autograd SGD, the Circuit engine, locality of the update."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heterograd import Circuit, HeterogradError, get_loss
from heterograd.models import Block, GPTConfig
from heterograd.nn import convert, plastic_layers
from heterograd.rules import RULES, make_rule
from heterograd.train import apply_steps, local_step

LR, LAM = 0.1, 1e-3


def _dense():
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))


def _conv1d():
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv1d(4, 4, 3, padding=2, dilation=2, groups=4),  # depthwise
        nn.Flatten(),
        nn.Linear(4 * 6, 3),
    )


def _conv2d():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        nn.Tanh(),
        nn.Conv2d(6, 6, 3, padding="same", groups=6, bias=False),  # depthwise, no bias
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def _bn2d():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )


def _groupnorm1d():
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)  # 8x8 -> 4x4
        x = F.relu(x + self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))
        return self.head(F.avg_pool2d(x, 2).flatten(1))


class _TransformerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = GPTConfig(vocab=5, block=4, layers=1, heads=2, dim=8)
        self.emb = nn.Embedding(5, 8)
        self.block = Block(cfg)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, idx):
        return self.head(self.ln(self.block(self.emb(idx))))


def _batch(kind: str, n: int = 8):
    g = torch.Generator().manual_seed(1)
    if kind == "tokens":
        return torch.randint(0, 5, (n, 4), generator=g), torch.randint(0, 5, (n, 4), generator=g)
    shape = {"dense": (n, 6), "conv1d": (n, 2, 12), "conv2d": (n, 2, 8, 8)}[kind]
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


MODELS = {
    "dense": (_dense, "dense"),
    "conv1d": (_conv1d, "conv1d"),
    "conv2d": (_conv2d, "conv2d"),
    "batchnorm2d": (_bn2d, "conv2d"),
    "groupnorm-conv1d": (_groupnorm1d, "conv1d"),
    "residual-maxpool-avgpool": (_Residual, "conv2d"),
    "transformer-block": (_TransformerBlock, "tokens"),
}


def _make(builder, seed=0):
    torch.manual_seed(seed)
    return builder().double()


def _sgd_run(model, x, y, steps, weight_decay):
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        _loss(model(x), y).backward()
        opt.step()


def _forward_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("feedback")}


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("rule", ["hsp", "kp", "bp"])
def test_bp_equivalent_settings_equal_autograd_sgd(float64, name, rule, steps):
    """B = W as transport, c = 1, equal decay: the local rule is SGD for any architecture (float64, 1e-10)."""
    builder, kind = MODELS[name]
    x, y = _batch(kind)
    ref = _make(builder)
    _sgd_run(ref, x, y, steps, LAM)
    opts: dict = {"feedback_init": "transpose"} if rule != "bp" else {}
    if rule == "hsp":
        opts["feedback_gain"] = 1.0  # c = 1 (hsp's default gain is 0.5)
    model = convert(_make(builder), rule, weight_decay=LAM, **opts)
    _sgd_run(model, x, y, steps, 0.0)  # the rule's own decay λ acts on W, b, B, γ, β
    want, got = ref.state_dict(), _forward_state(model)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k].double(), got[k].double(), atol=1e-10, rtol=0), k
    if rule != "bp":  # B stayed W as transport: the Kolen–Pollack relation holds step for step
        for _, m in plastic_layers(model):
            if getattr(m, "feedback", None) is not None:
                W = m.weight.detach()
                B = m.plasticity.synapse.as_forward(m.feedback.detach())
                assert torch.allclose(B, W, atol=1e-10)


def test_converted_mlp_equals_circuit_engine_under_hsp_with_random_feedback(float64):
    sizes = [8, 16, 12, 3]
    c = Circuit(sizes, "tanh", seed=3, dtype=torch.float64, feedback_init="random")
    rule = make_rule("hsp", weight_decay=1e-3, feedback_gain=0.7)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    convert(model, "hsp", weight_decay=1e-3, feedback_gain=0.7)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for l, m in enumerate(lins, start=1):
            m.weight.copy_(c.W[l - 1])
            m.bias.copy_(c.b[l - 1])
        for k, e in enumerate(c.edges):
            lins[e.src - 1].feedback.copy_(c.B[k])
    g = torch.Generator().manual_seed(0)
    loss = get_loss("ce")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    state = rule.init(c)
    for _ in range(10):
        x = torch.randn(12, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (12,), generator=g)
        out = local_step(c, rule, state, loss, x, y)
        state = out.rule_state
        apply_steps(c, [None if d is None else d * LR for d in out.deltas.flat()])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for l, m in enumerate(lins, start=1):
        assert torch.allclose(m.weight, c.W[l - 1], atol=1e-10, rtol=0)
        assert torch.allclose(m.bias, c.b[l - 1], atol=1e-10, rtol=0)
    for k, e in enumerate(c.edges):
        assert torch.allclose(lins[e.src - 1].feedback, c.B[k], atol=1e-10, rtol=0)
    assert not torch.allclose(lins[1].feedback, lins[1].weight.t(), atol=1e-3)  # random B: not backprop


def _fa_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).double()


def test_fa_applies_the_local_correlation_not_the_gradient(float64):
    x, y = _batch("conv2d")
    model = convert(_fa_model(), "fa", weight_decay=0.0)
    conv, lin = model[0], model[3]
    # the feedback potentials by hand: u at the top is the loss gradient, below it B-transport and σ'
    h0 = x
    p1 = F.conv2d(h0, conv.weight, conv.bias, padding=1)
    h1 = torch.tanh(p1).flatten(1)
    p2 = h1 @ lin.weight.t() + lin.bias
    u2 = (F.softmax(p2, 1) - F.one_hot(y, 3)) / x.shape[0]
    u1 = (u2 @ lin.feedback.t()).view_as(p1) * (1 - torch.tanh(p1) ** 2)
    C2 = u2.t() @ h1
    C1 = torch.nn.grad.conv2d_weight(h0, conv.weight.shape, u1, padding=1)
    model.zero_grad()
    _loss(model(x), y).backward()
    assert torch.allclose(lin.weight.grad, C2, atol=1e-12)  # .grad = -ΔW/η = C(u, h)
    assert torch.allclose(conv.weight.grad, C1, atol=1e-12)
    assert torch.allclose(conv.bias.grad, u1.sum((0, 2, 3)), atol=1e-12)
    ref = _fa_model()
    _loss(ref(x), y).backward()
    assert torch.allclose(lin.weight.grad, ref[3].weight.grad, atol=1e-12)  # the top layer's u is the error
    cos = F.cosine_similarity(conv.weight.grad.flatten(), ref[0].weight.grad.flatten(), dim=0)
    assert cos < 0.9, "under fa with random B the lower layer's update must differ from -∇W"


@pytest.mark.parametrize("rule", ["fa", "hsp", "poly"])
def test_no_plastic_update_comes_from_autograds_gradient(rule):
    """Zero feedback: every layer below the top gets no teaching signal, so its update is decay only.

    An update that came from autograd's ∇W would be nonzero there.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )
    convert(model, rule, weight_decay=0.0)
    with torch.no_grad():
        for _, m in plastic_layers(model):
            if getattr(m, "feedback", None) is not None:
                m.feedback.zero_()
    x, y = _batch("conv2d")
    _loss(model(x.float()), y).backward()
    named = dict(model.named_parameters())
    assert named["6.weight"].grad.abs().sum() > 0  # the top layer learns from the output error
    for k, p in named.items():
        if k.startswith("6.") or k.endswith("feedback"):
            continue
        assert p.grad is not None and p.grad.abs().max() == 0, k
    # every trainable parameter belongs to a converted module
    owned = {id(p) for _, m in plastic_layers(model) for p in m.parameters(recurse=False)}
    assert all(id(p) in owned for p in model.parameters())


def test_unsupported_modules_are_named_with_the_fix():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.LSTM(4, 8)
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 2)
            self.cls = nn.Parameter(torch.zeros(8))

    with pytest.raises(HeterogradError) as e:
        convert(Net(), "hsp")
    msg = str(e.value)
    assert "'enc' (LSTM)" in msg and "'attn' (MultiheadAttention)" in msg and "'<root>' (Net)" in msg
    assert "requires_grad_(False)" in msg
    frozen = Net()
    for m in (frozen.enc, frozen.attn):
        m.requires_grad_(False)
    frozen.cls.requires_grad_(False)
    convert(frozen, "hsp")  # frozen parameters are fine: nothing trains them


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "nope"}, "unknown rule"),
        ({"rule": "hsp", "learning_rate": 1}, "no option learning_rate"),
        ({"rule": "bp", "feedback_init": "random"}, "drop feedback_init"),
        ({"rule": "hsp", "feedback_init": "sideways"}, "unknown feedback init"),
        ({"rule": "freeze"}, "Circuit engine only"),
        ({"rule": "dfa"}, "example_input"),
        ({"rule": "kp", "feedback_gain": 0.5}, "c = 1"),
    ],
)
def test_bad_options_are_errors(kwargs, match):
    with pytest.raises(HeterogradError, match=match):
        convert(_dense(), **kwargs)


def test_converting_twice_is_an_error():
    m = convert(_dense(), "hsp")
    with pytest.raises(HeterogradError, match="already converted"):
        convert(m, "fa")


@pytest.mark.parametrize("rule", ["hsp", "fa", "frsf", "bp"])
def test_state_dict_round_trip_with_feedback_weights(rule):
    torch.manual_seed(0)
    a = convert(_bn2d(), rule, seed=1)
    x, y = _batch("conv2d")
    opt = torch.optim.SGD(a.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        _loss(a(x.float()), y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert ("0.feedback" in sd) == (rule != "bp")
    torch.manual_seed(5)
    b = convert(_bn2d(), rule, seed=2)
    b.load_state_dict(sd)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    a.eval()
    b.eval()
    assert torch.equal(a(x.float()), b(x.float()))


def test_rules_table_flags():
    assert RULES["hsp"].feedback == "plastic" and RULES["kp"].feedback == "plastic"
    assert RULES["fa"].feedback == "frozen" and RULES["dfa"].feedback == "direct"
    assert {n for n, c in RULES.items() if c.heterosynaptic} == {"hsp", "kp", "poly"}


def _small_convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


def test_autocast_bf16_matches_autograd_under_bp_equivalent_settings():
    ref, model = _small_convnet(), convert(_small_convnet(), "kp", feedback_init="transpose", weight_decay=0.0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for m in (ref, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
    got = [p for n, p in model.named_parameters() if not n.endswith("feedback")]
    for a, b in zip(ref.parameters(), got, strict=True):
        assert b.grad.dtype == torch.float32
        assert torch.allclose(a.grad, b.grad, rtol=1e-2, atol=1e-2 * float(a.grad.abs().max()))  # bf16 epsilon


def test_distributed_data_parallel_and_clipping_work_unchanged(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = convert(_small_convnet(), "hsp", seed=0)
        ddp = nn.parallel.DistributedDataParallel(model)
        plain = convert(_small_convnet(), "hsp", seed=0)
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        for m in (ddp, plain):
            F.cross_entropy(m(x), y).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.01)
        for a, b in zip(model.parameters(), plain.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, atol=1e-7)
        total = torch.sqrt(sum(p.grad.pow(2).sum() for p in plain.parameters()))
        assert float(total) == pytest.approx(0.01, rel=1e-4)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["hsp", "brsf", "dfa"])
def test_deepcopy_and_pickled_models_learn_like_the_original(rule):
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    convert(model, rule, **({"example_input": x} if rule == "dfa" else {}))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies = [copy.deepcopy(model), torch.load(buf, weights_only=False)]
    for m in (model, *copies):
        F.cross_entropy(m(x), y).backward()
    for c in copies:
        for p, q in zip(model.parameters(), c.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)
    if rule == "dfa":  # the copy's layers share the copy's own output-error holder
        assert copies[0][0].plasticity.direct is copies[0][2].plasticity.direct is not model[0].plasticity.direct


def test_dfa_example_forward_leaves_batchnorm_statistics_alone():
    model = _small_convnet()
    before = {k: b.clone() for k, b in model.named_buffers()}
    convert(model, "dfa", example_input=torch.randn(8, 1, 8, 8))
    after = dict(model.named_buffers())
    assert all(torch.equal(b, after[k]) for k, b in before.items())
    assert model[4].feedback.shape == (3, 256) and model[0].feedback is None  # the input takes no feedback


@pytest.mark.parametrize("name", ["dense", "residual-maxpool-avgpool", "batchnorm2d"])
def test_bp_rule_is_autograd_bit_for_bit_in_float32(name):
    """Converted bp runs the same kernels as autograd (conv: one convolution_backward with the bias)."""
    builder, kind = MODELS[name]
    x, y = _batch(kind)
    x = x.float()
    torch.manual_seed(0)
    ref = builder()
    torch.manual_seed(0)
    model = convert(builder(), "bp", weight_decay=LAM)
    for m, wd in ((ref, LAM), (model, 0.0)):
        opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=0.9, weight_decay=wd)
        for _ in range(3):
            opt.zero_grad()
            _loss(m(x), y).backward()
            opt.step()
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
