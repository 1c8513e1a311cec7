"""Optimiser motifs: exact equivalence with torch.optim, state, checkpoints, options, CLI."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import torch
from torch import nn

from heterograd import Circuit, get_loss, make_rule
from heterograd.errors import HeterogradError
from heterograd.optim import MOTIFS, cli_options, make_motif, parse_options, state_dict
from heterograd.train import TrainConfig, Trainer, apply_steps, local_step

SIZES = [6, 9, 7, 4]

# (motif name, heterograd/torch hyperparameters, torch optimiser class)
CASES: list[tuple[str, dict[str, Any], type[torch.optim.Optimizer]]] = [
    ("sgd", {"lr": 0.2}, torch.optim.SGD),
    ("momentum", {"lr": 0.05, "momentum": 0.9}, torch.optim.SGD),
    ("momentum", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3}, torch.optim.SGD),
    ("momentum", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, torch.optim.SGD),
    ("rmsprop", {"lr": 0.01}, torch.optim.RMSprop),
    ("rmsprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.5, "centered": True, "eps": 1e-6}, torch.optim.RMSprop),
    ("adam", {"lr": 0.01}, torch.optim.Adam),
    ("adam", {"lr": 0.02, "betas": (0.8, 0.99), "amsgrad": True}, torch.optim.Adam),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}, torch.optim.AdamW),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]


def _batches(steps: int, n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(123)
    return [
        (torch.randn(n, SIZES[0], generator=g, dtype=torch.float64), torch.randint(0, SIZES[-1], (n,), generator=g))
        for _ in range(steps)
    ]


def _torch_model(c: Circuit) -> nn.Sequential:
    layers: list[nn.Module] = []
    for l in range(c.depth):
        lin = nn.Linear(c.sizes[l], c.sizes[l + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(c.W[l])
            lin.bias.copy_(c.b[l])
        layers.append(lin)
        if l < c.depth - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _torch_kwargs(name: str, hyper: dict[str, Any], l2: float) -> dict[str, Any]:
    kw = dict(hyper)
    if name == "adamw":
        assert l2 == 0.0  # AdamW's weight_decay is the decoupled one
    elif l2:
        kw["weight_decay"] = l2  # torch's L2 decay is the rule's λ
    return kw


def _run_both(rule_name: str, name: str, hyper: dict[str, Any], opt_cls: type, l2: float = 0.0, steps: int = 20):
    c = Circuit(SIZES, "tanh", feedback_init="transpose", seed=3, dtype=torch.float64)
    model = _torch_model(c)
    opt = opt_cls(model.parameters(), **_torch_kwargs(name, hyper, l2))
    rule = make_rule(rule_name, weight_decay=l2, feedback_gain=1.0 if rule_name != "bp" else None)
    motif = make_motif(name, **hyper)
    loss = get_loss("ce")
    rstate, mstate = rule.init(c), motif.init(c.plastic_tensors())
    ce = nn.CrossEntropyLoss()
    for x, y in _batches(steps):
        out = local_step(c, rule, rstate, loss, x, y)
        rstate = out.rule_state
        s, mstate = motif.update(out.deltas.flat(), mstate, c.plastic_tensors())
        apply_steps(c, s)
        opt.zero_grad()
        ce(model(x), y).backward()
        opt.step()
    return c, model, mstate


def _max_diff(c: Circuit, model: nn.Sequential) -> float:
    lins = [m for m in model if isinstance(m, nn.Linear)]
    d = 0.0
    for l, lin in enumerate(lins):
        lin = lin.requires_grad_(False)
        d = max(d, float((c.W[l] - lin.weight).abs().max()), float((c.b[l] - lin.bias).abs().max()))
    return d


@pytest.mark.parametrize("rule_name", ["hsp", "bp"])
@pytest.mark.parametrize(("name", "hyper", "opt_cls"), CASES, ids=IDS)
def test_motif_equals_torch_optim(rule_name: str, name: str, hyper: dict[str, Any], opt_cls: type) -> None:
    c, model, _ = _run_both(rule_name, name, hyper, opt_cls)
    assert _max_diff(c, model) < 1e-10
    # the weights actually moved (the comparison is not vacuous)
    c0 = Circuit(SIZES, "tanh", feedback_init="transpose", seed=3, dtype=torch.float64)
    assert float((c.W[0] - c0.W[0]).abs().max()) > 1e-3
    if rule_name == "hsp":  # B stays exactly Wᵀ: the circuit is backprop with this optimiser
        for k, e in enumerate(c.edges):
            assert float((c.B[k] - c.W[e.src - 1].t()).abs().max()) < 1e-12


@pytest.mark.parametrize("rule_name", ["hsp", "bp"])
@pytest.mark.parametrize("case", [1, 3, 5, 7], ids=[IDS[i] for i in (1, 3, 5, 7)])
def test_rule_l2_decay_is_torch_weight_decay(rule_name: str, case: int) -> None:
    name, hyper, opt_cls = CASES[case]
    c, model, _ = _run_both(rule_name, name, hyper, opt_cls, l2=0.05)
    assert _max_diff(c, model) < 1e-10


def test_different_hyperparameters_differ() -> None:
    """Guard: the equivalence check can fail (a wrong beta is detected)."""
    _, model, _ = _run_both("bp", "adam", {"lr": 0.01}, torch.optim.Adam)
    c2, _, _ = _run_both("bp", "adam", {"lr": 0.01, "betas": (0.5, 0.999)}, torch.optim.Adam)
    assert _max_diff(c2, model) > 1e-6


@pytest.mark.parametrize("name", sorted(MOTIFS))
def test_frozen_tensors_keep_no_state(name: str) -> None:
    c = Circuit(SIZES, "tanh", seed=0, dtype=torch.float64)
    rule, motif, loss = make_rule("fa"), make_motif(name, lr=0.01), get_loss("ce")
    mstate = motif.init(c.plastic_tensors())
    for x, y in _batches(3):
        out = local_step(c, rule, None, loss, x, y)
        s, mstate = motif.update(out.deltas.flat(), mstate, c.plastic_tensors())
        nW = 2 * c.depth
        assert all(t is None for t in s[nW:]) and all(t is not None for t in s[:nW])
        apply_steps(c, s)
    for b in motif.buffers:
        assert all(v is None for v in mstate[b][2 * c.depth :])
    assert mstate["count"] == [3] * (2 * c.depth) + [0] * len(c.B)
    assert mstate["step"] == 3


@pytest.mark.parametrize(("name", "hyper", "opt_cls"), CASES, ids=IDS)
def test_state_checkpoint_roundtrip_resumes_exactly(name: str, hyper: dict[str, Any], opt_cls: type) -> None:
    batches = _batches(10)
    rule, loss, motif = make_rule("hsp"), get_loss("ce"), make_motif(name, **hyper)

    def run(c: Circuit, st: dict, bs: list) -> dict:
        for x, y in bs:
            out = local_step(c, rule, None, loss, x, y)
            s, st = motif.update(out.deltas.flat(), st, c.plastic_tensors())
            apply_steps(c, s)
        return st

    ca = Circuit(SIZES, seed=1, dtype=torch.float64)
    run(ca, motif.init(ca.plastic_tensors()), batches)

    cb = Circuit(SIZES, seed=1, dtype=torch.float64)
    st = run(cb, motif.init(cb.plastic_tensors()), batches[:4])
    buf = io.BytesIO()
    torch.save({"motif_state": motif.state_dict(st), "weights": cb.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    cc = Circuit(SIZES, seed=99, dtype=torch.float64)
    cc.load_state_dict(saved["weights"])
    st2 = motif.load_state_dict(saved["motif_state"], cc.plastic_tensors())
    run(cc, st2, batches[4:])
    for a, b in zip(ca.plastic_tensors(), cc.plastic_tensors(), strict=True):
        assert torch.equal(a, b)


def test_update_does_not_change_old_state() -> None:
    c = Circuit(SIZES, seed=0, dtype=torch.float64)
    motif, rule, loss = make_motif("adam", lr=0.01), make_rule("hsp"), get_loss("ce")
    st = motif.init(c.plastic_tensors())
    (x, y), (x2, y2) = _batches(2)
    _, st1 = motif.update(local_step(c, rule, None, loss, x, y).deltas.flat(), st, c.plastic_tensors())
    snap = state_dict(st1)
    _, st2 = motif.update(local_step(c, rule, None, loss, x2, y2).deltas.flat(), st1, c.plastic_tensors())
    assert st["step"] == 0 and st1["step"] == 1 and st2["step"] == 2
    for a, b in zip(snap["exp_avg"], st1["exp_avg"], strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_errors() -> None:
    c = Circuit(SIZES, seed=0, dtype=torch.float64)
    adam = make_motif("adam")
    st = adam.init(c.plastic_tensors())
    with pytest.raises(HeterogradError, match="--optimizer adam"):
        make_motif("momentum").load_state_dict(st, c.plastic_tensors())
    with pytest.raises(HeterogradError, match="different circuit"):
        adam.load_state_dict(st, c.plastic_tensors()[:-1])
    st["exp_avg"][0] = torch.zeros(3, 3)
    with pytest.raises(HeterogradError, match="shape"):
        adam.load_state_dict(st, c.plastic_tensors())
    with pytest.raises(HeterogradError, match="belongs to"):
        make_motif("sgd").update([None] * len(st["count"]), st, c.plastic_tensors())


@pytest.mark.parametrize(
    ("name", "hyper", "match"),
    [
        ("sgd", {"lr": -1.0}, "learning rate"),
        ("sgd", {"momentum": 0.9}, "optimizer momentum"),
        ("adam", {"weight_decay": 0.1}, "adamw"),
        ("adam", {"betas": (0.9, 1.0)}, "beta2"),
        ("adam", {"betas": (0.9,)}, "two numbers"),
        ("momentum", {"momentum": 0.0, "nesterov": True}, "Nesterov"),
        ("momentum", {"momentum": 1.5}, "momentum must be in"),
        ("rmsprop", {"eps": -1.0}, "eps"),
        ("adamw", {"weight_decay": -0.1}, "decoupled weight decay"),
        ("lion", {}, "unknown optimizer"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors(name: str, hyper: dict[str, Any], match: str) -> None:
    with pytest.raises(HeterogradError, match=match) as exc:
        make_motif(name, **hyper)
    assert "\n" not in str(exc.value)


def test_make_motif_api_and_none_means_default() -> None:
    m = make_motif("adam", lr=1e-3, betas=[0.9, 0.99], eps=None)
    assert m.betas == (0.9, 0.99) and m.eps == 1e-8
    assert "betas=(0.9, 0.99)" in m.describe()


def test_option_parsing() -> None:
    assert parse_options("momentum=0.9, nesterov=true,betas=0.8:0.99") == {
        "momentum": 0.9,
        "nesterov": True,
        "betas": (0.8, 0.99),
    }
    assert parse_options(None) == {} and parse_options("") == {}
    opts = cli_options(momentum=0.9, nesterov=True, betas="0.9,0.99", extra="dampening=0")
    assert opts == {"momentum": 0.9, "nesterov": True, "betas": (0.9, 0.99), "dampening": 0.0}
    assert cli_options() == {}
    for bad, match in [
        ({"extra": "momentum"}, "key=value"),
        ({"extra": "momentum=fast"}, "not a number"),
        ({"momentum": 0.9, "extra": "momentum=0.5"}, "twice"),
        ({"extra": "lr=0.1"}, "--lr"),
        ({"betas": "0.9"}, "two comma-separated"),
    ]:
        with pytest.raises(HeterogradError, match=match):
            cli_options(**bad)


def test_trainer_uses_optimizer_options_and_motifs_never_call_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError("autograd called during local learning")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    for name, opts in [("momentum", {"momentum": 0.9, "nesterov": True}), ("adamw", {"betas": [0.9, 0.99]})]:
        cfg = TrainConfig(
            data="digits",
            rule="hsp",
            epochs=1,
            hidden=(16,),
            lr=0.01,
            n_train=128,
            n_test=64,
            probes=False,
            optimizer=name,
            optimizer_options=opts,
        )
        tr = Trainer(cfg)
        x, y = tr.data.x_train[:32], tr.data.y_train[:32]
        for _ in range(3):
            tr.train_step(x, y)
        assert tr.motif.name == name and tr.motif_state["step"] == 3
        buf = io.BytesIO()
        torch.save(tr.motif_state, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
        assert loaded["count"] == tr.motif_state["count"]


def test_cli_train_optimizer_flags(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from heterograd.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--epochs", "1", "--hidden", "8", "--n-train", "64", "--n-test", "32"]
    argv += ["--optimizer", "momentum", "--momentum", "0.9", "--nesterov", "--lr", "0.01", "--no-progress"]
    argv += ["--no-probes", "--out", str(out)]
    main(argv)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optimizer"] == "momentum" and cfg["optimizer_options"] == {"momentum": 0.9, "nesterov": True}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-1], str(tmp_path / "bad"), "--optimizer", "sgd"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: optimizer 'sgd' has no option 'momentum'") and "\n" not in err


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one torch thread avoids oversubscription on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
