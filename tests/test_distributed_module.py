"""Data-parallel converted models (DDP, gloo, 2 processes, float64) equal one process on the combined batch.

One spawn of two ranks runs every case (process start-up dominates the cost); each rank saves its results and
the tests compare them with :class:`ModuleTrainer` runs in this process, step for step (the logged train loss
of every step) and at the end (every parameter and buffer).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from heterograd import TrainConfig
from heterograd.data import Dataset
from heterograd.errors import HeterogradError
from heterograd.train import TrainingInterrupted
from heterograd.train_module import ModuleTrainer

FACTORY = """
from torch import nn


def build(in_shape, num_classes, bn=True):
    c, h, w = in_shape
    layers = [nn.Conv2d(c, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * (h // 2) * (w // 2), num_classes)]
    return nn.Sequential(*layers)
"""

# 100 images, global batch 25 (shards of 12 and 13: unequal), 2 epochs = 8 steps, a row per step
BASE = dict(
    data="digits", n_train=100, n_test=40, batch_size=25, epochs=2, dtype="float64", probes=False, log_every=1,
    lr=0.05, seed=5, optimizer="momentum", optimizer_options={"momentum": 0.9},
)  # fmt: skip


def data() -> Dataset:
    """120 + 40 random 8x8 one-channel images in 10 classes (no dataset file to read: start-up stays quick)."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(160, 64, generator=g), torch.randint(0, 10, (160,), generator=g)
    return Dataset("random8x8", x[:120], y[:120], x[120:], y[120:], 10, (1, 8, 8))


def cases(factory: str) -> dict[str, TrainConfig]:
    """The data-parallel cases; ``bn-per-rank`` is the control that must differ from one process."""
    conv = dict(BASE, model=f"{factory}:build", augment=True)
    return {
        "mlp-hsp": TrainConfig(**dict(BASE, model="mlp", rule="hsp", hidden=(16,))),  # type: ignore[arg-type]
        "conv-kp": TrainConfig(**dict(conv, rule="kp", model_options={"bn": False})),  # type: ignore[arg-type]
        "bn-sync-kp": TrainConfig(**dict(conv, rule="kp", sync_batchnorm=True, probes=True, probe_size=16)),  # type: ignore[arg-type]
        "bn-per-rank": TrainConfig(**dict(conv, rule="kp")),  # type: ignore[arg-type]
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(trainer: ModuleTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank: int, world: int, port: int, out_dir: str, factory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from heterograd.distributed.module import DistributedModuleTrainer, resume_distributed

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    out = Path(out_dir)
    try:
        results: dict = {}
        ds = data()
        for name, cfg in cases(factory).items():
            tr = DistributedModuleTrainer(dataclasses.replace(cfg), ds)
            tr.fit(out / name if name == "mlp-hsp" else None, progress=False)  # one run folder (figures are slow)
            results[name] = (_state(tr), [r["train_loss"] for r in tr.rows], [r for r in tr.rows])
        # a stop on rank 1 only at step 3: every rank stops there; rank 0's checkpoint resumes every rank
        cfg = dataclasses.replace(cases(factory)["bn-sync-kp"], checkpoint_every=100)
        stopper = DistributedModuleTrainer(cfg, ds)

        def on_log(row: dict, tr: DistributedModuleTrainer = stopper) -> None:
            if rank == 1 and row["step"] == 3:
                tr._stop_signal = signal.SIGTERM

        try:
            stopper.fit(out / "stopped", progress=False, on_log=on_log, handle_signals=False)
            results["stopped_at"] = None
        except TrainingInterrupted as exc:
            results["stopped_at"] = (exc.step, exc.signum)
        dist.barrier()  # rank 0 has written the checkpoint
        resumed = resume_distributed(out / "stopped", ds)
        resumed.fit(out / "stopped", progress=False)
        results["resumed"] = (_state(resumed), [r["train_loss"] for r in resumed.rows])
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def factory(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tinyconv.py"
    path.write_text(FACTORY)
    return str(path)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ddp-module")
    mp.spawn(_worker, args=(2, _free_port(), str(out), factory), nprocs=2, join=True)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt"), out


@pytest.fixture(scope="module")
def single(factory) -> dict[str, tuple[dict, list, list]]:
    runs = {}
    for name, cfg in cases(factory).items():
        tr = ModuleTrainer(dataclasses.replace(cfg, sync_batchnorm=False), data())
        tr.fit(None, progress=False)
        runs[name] = (_state(tr), [r["train_loss"] for r in tr.rows], [r for r in tr.rows])
    return runs


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("name", ["mlp-hsp", "conv-kp", "bn-sync-kp"])
def test_two_ranks_equal_one_process_on_the_combined_batch(ranks, single, name):
    r0, r1, out = ranks
    (s0, l0, _), (s1, l1, _), (ss, ls, _) = r0[name], r1[name], single[name]
    assert l0 == l1
    assert _max_diff(s0, s1) == 0.0, "ranks disagree"
    assert len(l0) == len(ls) == 8  # a logged row per step
    assert l0 == pytest.approx(ls, abs=1e-12, rel=0)  # step for step
    assert _max_diff(s0, ss) < 1e-11  # weights, B, BatchNorm γ/β and running statistics
    if name == "mlp-hsp":
        assert (out / name / "summary.json").exists()  # rank 0 wrote the run folder
        assert not (out / name / "tensorboard").exists()


def test_probes_under_sync_batchnorm_match_one_process(ranks, single):
    rows0, rows1 = ranks[0]["bn-sync-kp"][2], single["bn-sync-kp"][2]
    keys = [k for k in rows1[-1] if k.startswith(("phi/", "align/"))]
    assert keys
    for k in keys:
        assert rows0[-1][k] == pytest.approx(rows1[-1][k], abs=1e-9)


def test_per_rank_batchnorm_statistics_differ_from_one_process(ranks, single):
    """The control: without --sync-batchnorm each rank normalises its own shard, which is not the combined batch."""
    r0, _, _ = ranks
    assert _max_diff(r0["bn-per-rank"][0], single["bn-per-rank"][0]) > 1e-6


def test_a_stop_on_one_rank_stops_all_and_the_resumed_run_equals_the_uninterrupted_one(ranks, single):
    r0, r1, _ = ranks
    assert r0["stopped_at"] == r1["stopped_at"] == (3, signal.SIGTERM)
    state, losses = r0["resumed"]
    assert _max_diff(state, r1["resumed"][0]) == 0.0
    ref_state, ref_losses, _ = single["bn-sync-kp"]
    assert losses == pytest.approx(ref_losses, abs=1e-12, rel=0)
    assert _max_diff(state, ref_state) < 1e-11


def test_sync_batchnorm_needs_a_data_parallel_run_and_a_batchnorm(factory):
    cfg = TrainConfig(**dict(BASE, model="mlp", rule="kp", sync_batchnorm=True))  # type: ignore[arg-type]
    with pytest.raises(HeterogradError, match="--distributed"):
        ModuleTrainer(cfg)
    with pytest.raises(HeterogradError, match="only to a converted model"):
        TrainConfig(sync_batchnorm=True).validate()
    from heterograd.distributed.batchnorm import convert_sync_batchnorm
    from heterograd.models import make_model
    from heterograd.nn import convert

    model = convert(make_model("mlp", (64,), 10, hidden=(8,)), "kp")
    with pytest.raises(HeterogradError, match="no BatchNorm"):
        convert_sync_batchnorm(model)


def _cli(args: list[str]) -> int:
    from heterograd.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mlp", "--sync-batchnorm"], "add --distributed"),
        (["--amp", "bf16"], "only to a converted model"),
        (["--model", "mlp", "--amp", "fp16"], "use --amp bf16"),
        (["--model", "mlp", "--distributed"], "launch with: torchrun"),  # --model takes --distributed (0.2: refused)
    ],
)
def test_cli_refuses_options_that_do_not_apply(args, message, tmp_path, capsys):
    assert _cli(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_model_cli_equals_single_process(tmp_path, factory):
    """The real launcher: `torchrun --nproc-per-node 2 -m heterograd.distributed --model ...` (gloo)."""
    import json
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    args = ["--model", "resnet20", "--data", "digits", "--rule", "kp", "--epochs", "1", "--n-train", "100",
            "--n-test", "40", "--batch-size", "25", "--dtype", "float64", "--no-probes", "--no-progress",
            "--sync-batchnorm", "--augment", "--lr", "0.05", "--seed", "3", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    subprocess.run([*cmd, "-m", "heterograd.distributed", *args, "--out", str(tmp_path / "ddp")], check=True, env=env)
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    cfg = TrainConfig(
        model="resnet20", data="digits", rule="kp", epochs=1, n_train=100, n_test=40, batch_size=25, dtype="float64",
        probes=False, augment=True, lr=0.05, seed=3, log_every=1,
    )  # fmt: skip
    single = ModuleTrainer(cfg).fit(None, progress=False).summary
    assert ddp["world_size"] == 2
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], abs=1e-10)
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], abs=1e-10)


def test_every_cuda_device_becomes_this_ranks_gpu(monkeypatch):
    """A resumed config holds rank 0's `cuda:0`; rank 1 must still take `cuda:1` (one GPU per rank)."""
    import heterograd.distributed.trainer as d

    monkeypatch.setattr(d, "resolve_device", lambda dev: dev)
    monkeypatch.setattr(d, "init_distributed", lambda dev: (1, 2))
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for given in ("cuda", "cuda:0"):
        cfg = TrainConfig(device=given)
        d.RankMixin().join(cfg)
        assert cfg.device == "cuda:1"
    cfg = TrainConfig(device="cpu")
    d.RankMixin().join(cfg)
    assert cfg.device == "cpu"


def test_reduced_batchnorm_with_identity_reduce_is_the_plastic_batchnorm(float64):
    """One shard (identity reduce): output, input feedback, γ/β updates (with λ) and running statistics as the
    converted BatchNorm's fused kernel."""
    from heterograd.nn import convert
    from heterograd.nn.reduced_batchnorm import ReducedBatchNormFunction

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 5, generator=g)
    u = torch.randn(6, 3, 4, 5, generator=g)
    outs = []
    for reduced in (False, True):
        bn = convert(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), "kp", weight_decay=0.01)[0]
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=g) if not reduced else bn.weight.copy_(outs[0][4])
        x = x0.clone().requires_grad_(True)
        if reduced:
            y = ReducedBatchNormFunction.apply(
                x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, bn.plasticity,
                lambda t: t,
            )  # fmt: skip
        else:
            y = bn(x)
        y.backward(u)
        outs.append((y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.weight.detach().clone(), bn.running_var))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
