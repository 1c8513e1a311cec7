"""The training-step benchmark: quick run writes JSON + markdown; baselines are faithful; memory is measured."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from heterograd.bench import (
    IMPLS,
    BenchConfig,
    autograd_mlp,
    markdown,
    parse_sizes_arg,
    peak_step_memory,
    run_benchmark,
    targets,
)
from heterograd.circuits import Circuit
from heterograd.cli import main
from heterograd.errors import HeterogradError
from heterograd.losses import get_loss
from heterograd.rules import make_rule
from heterograd.train import local_step


def test_quick_bench_cli_writes_json_and_markdown(tmp_path, capsys):
    main(["bench", "--quick", "--out", str(tmp_path), "--repeats", "3"])
    result = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    rows = result["results"]
    assert {r["impl"] for r in rows} == set(IMPLS)
    bp = next(r for r in rows if r["impl"] == "bp-autograd")
    assert bp["ratio_to_bp"] == pytest.approx(1.0)
    for r in rows:
        assert r["median_ms"] > 0 and r["samples_per_s"] > 0 and r["peak_bytes"] > 0
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert f"| {r['label']} |" in md
    claims = {t["claim"] for t in result["targets"]}
    assert any("fa-autograd" in c for c in claims) and any("memory" in c for c in claims)
    assert all(isinstance(t["holds"], bool) for t in result["targets"])
    assert "| 16-32-32-4 @ 8 | hsp |" in capsys.readouterr().out


def test_targets_are_computed_from_the_rows():
    common = {"shape": "s", "dtype": "float32", "compiled": False}
    rows = [
        {**common, "impl": "bp-autograd", "ratio_to_bp": 1.0, "peak_bytes": 100},
        {**common, "impl": "fa-autograd", "ratio_to_bp": 1.0, "peak_bytes": 90},
        {**common, "impl": "hsp", "ratio_to_bp": 0.9, "peak_bytes": 120},
    ]
    got = {t["claim"]: t["holds"] for t in targets(rows)}
    assert got == {
        "hsp step time / bp-autograd <= 1.0": True,
        "hsp step time / fa-autograd <= 0.8": False,
        "hsp peak step memory / bp-autograd <= 1.0": False,
    }


def _autograd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, wd: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    nn.CrossEntropyLoss()(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize(("baseline", "rule"), [("fa-autograd", "fa"), ("bp-autograd", "hsp")])
def test_autograd_baselines_do_the_same_step_as_the_local_rules(baseline, rule):
    """The biotorch-style FA baseline equals heterograd's fa; autograd backprop equals hsp with B = Wᵀ."""
    init = "transpose" if baseline == "bp-autograd" else "random"
    c = Circuit([12, 9, 7, 4], seed=1, feedback_init=init, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 12, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)
    model = autograd_mlp(c, feedback_alignment=baseline == "fa-autograd")
    _autograd_step(model, x, y, lr=0.1, wd=1e-3)
    out = local_step(c, make_rule(rule, weight_decay=1e-3), None, get_loss("ce"), x, y)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for lin, W, b, dW, db in zip(linears, c.W, c.b, out.deltas.W, out.deltas.b, strict=True):
        assert torch.allclose(lin.weight.detach(), W + 0.1 * dW, atol=1e-12)
        assert torch.allclose(lin.bias.detach(), b + 0.1 * db, atol=1e-12)


def test_peak_memory_sees_a_temporary():
    def step() -> None:
        t = torch.ones(512, 1024)  # 2 MiB, freed at the end of the step
        t.mul_(2.0)

    peak = peak_step_memory(step, torch.device("cpu"))
    assert 2 * 2**20 <= peak < 3 * 2**20


def test_bad_options_give_one_line_errors():
    with pytest.raises(HeterogradError, match="valid choices"):
        BenchConfig(impls=("nope",)).validate()
    with pytest.raises(HeterogradError, match="widths@batch"):
        parse_sizes_arg("784,1024")
    assert parse_sizes_arg("8,4,2@16;3,2@4") == (((8, 4, 2), 16), ((3, 2), 4))


def test_bfloat16_step_runs_end_to_end():
    cfg = BenchConfig.quick(impls=("hsp",), dtypes=("bfloat16",), memory=False, repeats=1)
    result = run_benchmark(cfg)
    assert {r["dtype"] for r in result["results"]} == {"bfloat16"}
    assert "bfloat16" in markdown(result)


def test_compile_failure_is_one_clear_error(monkeypatch):
    from heterograd.train import compile_local_step

    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = compile_local_step()
    c = Circuit([4, 3, 2], seed=0)
    with pytest.raises(HeterogradError, match=r"torch\.compile failed.*run without --compile"):
        step(c, make_rule("hsp"), None, get_loss("ce"), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    from heterograd.train import compile_local_step

    c = Circuit([12, 9, 7, 4], seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 12, generator=g), torch.randint(0, 4, (6,), generator=g)
    rule, loss = make_rule("hsp", weight_decay=1e-3), get_loss("ce")
    eager = local_step(c, rule, None, loss, x, y)
    compiled = compile_local_step()(c, rule, None, loss, x, y)
    for a, b in zip(eager.deltas.flat(), compiled.deltas.flat(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(eager.loss, compiled.loss, atol=1e-6)


# --------------------------------------------------------------------------- model cases (--models)
def _model_case(impl: str, model: str = "lenet5", shape: tuple[int, ...] = (1, 28, 28), batch: int = 4):
    from heterograd.bench import Case

    return Case(impl, shape, batch, "float64", False, model)


def _run_steps(impl: str, cfg: BenchConfig, model: str, shape: tuple[int, ...], n: int = 2):
    from heterograd.bench import make_step

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=g)
    step = make_step(_model_case(impl, model, shape), cfg, x, y)
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    for _ in range(n):
        step()
    return before, step.model.state_dict()


@pytest.mark.parametrize(("model", "shape"), [("lenet5", (1, 28, 28)), ("resnet20", (1, 8, 8))])
def test_model_cases_do_the_same_step(model, shape):
    """Converted bp = autograd backprop (SGD momentum, weight decay in the rule vs the optimiser); the fused
    variants (optimiser step inside the sweep) equal their unfused cases; every rule's step moves the weights."""
    cfg = BenchConfig.for_models((model,), input_shape=shape, batch=4, dtypes=("float64",), lr=0.1, weight_decay=1e-3)
    cfg.validate()
    steps = {
        i: _run_steps(i, cfg, model, shape) for i in ("bp-autograd", "bp", "bp-autograd-fused", "hsp", "hsp-fused")
    }
    start, ref = steps["bp-autograd"]
    for impl in ("bp", "bp-autograd-fused"):
        before, after = steps[impl]
        for k, v in ref.items():
            assert torch.equal(before[k], start[k]), k  # same initial weights
            assert torch.allclose(after[k], v, atol=1e-10, rtol=0), (impl, k)
    hsp, fused = steps["hsp"][1], steps["hsp-fused"][1]
    assert any(k.endswith("feedback") for k in hsp)  # B is plastic and stepped inside the sweep too
    for k, v in hsp.items():
        assert torch.allclose(fused[k], v, atol=1e-10, rtol=0), k
    for impl in ("fa", "usf"):
        before, after = _run_steps(impl, cfg, model, shape, n=1)
        w = [k for k in after if k.endswith("weight") and after[k].dim() > 1]
        assert all(not torch.equal(before[k], after[k]) for k in w), impl


def test_model_bench_cli_quick_writes_the_named_files(tmp_path, capsys):
    out = ["--out", str(tmp_path), "--stem", "bench-convnets", "--repeats", "2"]
    main(["bench", "--models", "lenet5", "--quick", "--impls", "bp-autograd,hsp,usf", *out])
    result = json.loads((tmp_path / "bench-convnets.json").read_text())
    assert (tmp_path / "bench-convnets.md").exists()
    rows = result["results"]
    assert [(r["model"], r["impl"], r["batch"]) for r in rows] == [
        ("lenet5", i, 8) for i in ("bp-autograd", "hsp", "usf")
    ]
    assert all(r["median_ms"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert all(r["minor_faults_per_step"] is None or r["minor_faults_per_step"] >= 0 for r in rows)
    assert isinstance(result["environment"]["malloc_env"], dict)
    claims = [t["claim"] for t in result["targets"]]
    assert claims == ["hsp step time / bp-autograd <= 1.05", "hsp peak step memory / bp-autograd <= 1.1"]
    assert "| lenet5 1x28x28 @ 8 | hsp |" in capsys.readouterr().out


def test_model_targets_use_the_model_thresholds():
    common = {"shape": "lenet5 1x28x28 @ 128", "dtype": "float32", "compiled": False, "model": "lenet5"}
    rows = [
        {**common, "impl": "bp-autograd", "ratio_to_bp": 1.0, "peak_bytes": 100},
        {**common, "impl": "hsp", "ratio_to_bp": 1.04, "peak_bytes": 111},
        {**common, "impl": "kp", "ratio_to_bp": 1.06, "peak_bytes": 109},
    ]
    got = {t["claim"]: t["holds"] for t in targets(rows)}
    assert got == {
        "hsp step time / bp-autograd <= 1.05": True,
        "hsp peak step memory / bp-autograd <= 1.1": False,
        "kp step time / bp-autograd <= 1.05": False,
        "kp peak step memory / bp-autograd <= 1.1": True,
    }


def test_model_bench_bad_options_give_one_line_errors():
    with pytest.raises(HeterogradError, match="do not apply to a model benchmark"):
        BenchConfig.for_models(("lenet5",), impls=("poly",)).validate()
    with pytest.raises(HeterogradError, match="unknown model"):
        BenchConfig.for_models(("nope",)).validate()
    with pytest.raises(HeterogradError, match="either --models or --sizes"):
        BenchConfig.for_models(("lenet5",), sizes=(((4, 2), 2),)).validate()
    with pytest.raises(HeterogradError, match="one dtype"):
        BenchConfig.for_models(("lenet5",), dtypes=("float32", "bfloat16")).validate()
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--batch", "64"])
    assert exc.value.code == 2


def test_total_memory_counts_parameters_feedback_and_optimiser_state():
    """Total = resident (parameters + buffers + optimiser state) + step peak: hsp's resident memory is bp's plus
    B and B's momentum (twice the weights' bytes), fa's plus its frozen B (a buffer, no momentum)."""
    from heterograd.bench import make_step, resident_bytes
    from heterograd.bench.runner import Case

    cfg = BenchConfig.for_models(("lenet5",), batch=4, dtypes=("float32",))
    cfg.validate()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    res = {}
    for impl in ("bp-autograd", "bp", "hsp", "fa", "hsp-fused"):
        step = make_step(Case(impl, (1, 28, 28), 4, "float32", False, "lenet5"), cfg, x, y)
        step()  # momentum buffers exist from the first step on
        res[impl] = resident_bytes(step)
    params = dict(make_step(Case("bp", (1, 28, 28), 4, "float32", False, "lenet5"), cfg, x, y).model.named_parameters())
    n_bytes = 4 * sum(p.numel() for p in params.values())
    w_bytes = 4 * sum(p.numel() for n, p in params.items() if n.endswith("weight"))  # = B's bytes
    bp = res["bp-autograd"]
    assert bp.parameters == n_bytes and bp.optimizer_state == n_bytes  # SGD momentum: one buffer per parameter
    assert res["bp"].total == bp.total
    assert res["hsp"].parameters == n_bytes + w_bytes == res["hsp"].optimizer_state  # B and B's momentum
    assert res["hsp"].total == bp.total + 2 * w_bytes
    assert res["fa"].total == bp.total + w_bytes  # frozen B: stored, no optimiser state
    assert res["hsp-fused"].total == res["hsp"].total  # per-parameter optimisers hold the same state


def test_markdown_shows_total_memory_and_says_when_a_run_predates_it():
    row = {
        "shape": "lenet5 1x28x28 @ 8",
        "label": "hsp",
        "dtype": "float32",
        "median_ms": 1.0,
        "ratio_to_bp": 1.0,
        "samples_per_s": 8.0,
        "peak_bytes": 2**20,
        "memory_ratio_to_bp": 1.03,
        "total_bytes": 3 * 2**20,
        "total_memory_ratio_to_bp": 1.08,
    }
    env = {"heterograd": "x", "torch": "x", "device": "cpu", "cpu": "x", "torch_threads": 1}
    env |= {"loadavg_start": None, "loadavg_end": None}
    result = {"environment": env, "results": [row], "targets": [], "timing_method": "t", "memory_method": "m"}
    text = markdown(result)
    assert "| total MiB | total × bp |" in text and "| 1.00 | 1.03 | 3.00 | 1.08 |" in text
    old = {k: v for k, v in row.items() if not k.startswith("total")}
    text = markdown({**result, "results": [old]})
    assert "| 1.00 | 1.03 | - | - |" in text and "predates the column" in text


def test_cli_epoch_quick_writes_the_lock_step_ratio_and_decays_every_side(tmp_path, capsys):
    """`bench --case cli-epoch`: every side at the same λ, a lock-step epoch per round, the target on its ratio."""
    main(
        ["bench", "--case", "cli-epoch", "--quick", "--weight-decay", "0.001", "--repeats", "2", "--out", str(tmp_path)]
    )
    result = json.loads((tmp_path / "cli-epoch.json").read_text())
    md = (tmp_path / "cli-epoch.md").read_text()
    assert result["config"]["weight_decay"] == 0.001 and "weight decay 0.001 on both sides" in md
    assert len(result["lockstep_ratios"]) == 2 and all(r > 0 for r in result["lockstep_ratios"])
    assert all(h > 0 for h in result["lockstep_hand_cpu_seconds"])
    assert result["target"]["measured"] == round(result["lockstep_ratio"], 3)
    assert "Median lock-step ratio" in md and "Separate epochs" in md
    assert result["test_accuracy"]["lockstep"] == result["test_accuracy"]["cli"]  # the same training, interleaved


def test_cli_epoch_target_can_fail():
    from heterograd.bench.epoch import CLI_EPOCH_TARGET, epoch_target

    assert epoch_target(CLI_EPOCH_TARGET - 0.001)["holds"]
    assert not epoch_target(CLI_EPOCH_TARGET + 0.001)["holds"]
    assert not epoch_target(float("nan"))["holds"]


def test_cli_epoch_rejects_what_does_not_apply_and_a_negative_decay(tmp_path, capsys):
    for extra, message in (
        (["--sizes", "8,4@2"], "--sizes do not apply to --case cli-epoch"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--case", "cli-epoch", "--quick", *extra, "--out", str(tmp_path)])
        assert exc.value.code == 2 and message in capsys.readouterr().err
