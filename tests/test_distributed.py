"""Data-parallel training (gloo, 2 processes on this machine) equals the single-process run on the combined batch."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from heterograd import TrainConfig, Trainer
from heterograd.circuits import Circuit
from heterograd.distributed import shard_bounds
from heterograd.errors import HeterogradError
from heterograd.losses import get_loss
from heterograd.optim import make_motif
from heterograd.rules import make_rule
from heterograd.train import TrainingInterrupted, apply_steps, local_step

SIZES = [64, 24, 16, 10]
BATCHES = (24, 25, 7)  # even split, uneven split (12/13), small odd batch (3/4)
CONFIG = dict(
    data="digits", rule="hsp", epochs=1, n_train=96, n_test=40, batch_size=32, hidden=(24, 16),
    dtype="float64", probes=False, log_every=1, weight_decay=1e-3, lr=0.1, seed=3,
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (torch.randn(n, SIZES[0], generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g))
        for n in BATCHES
    ]


def _functional_run(rule_name: str, step: object) -> list[torch.Tensor]:
    """A few SGD steps of ``rule_name`` with ``step`` in place of local_step; returns the final tensors."""
    circuit = Circuit(SIZES, seed=0, dtype=torch.float64)
    rule = make_rule(rule_name, weight_decay=1e-3)
    motif = make_motif("sgd", lr=0.1)
    ms, rs, loss = motif.init(circuit.plastic_tensors()), rule.init(circuit), get_loss("ce")
    losses = []
    for x, y in _batches():
        out = step(circuit, rule, rs, loss, x, y)  # type: ignore[operator]
        rs = out.rule_state
        steps, ms = motif.update(out.deltas.flat(), ms, circuit.plastic_tensors())
        apply_steps(circuit, steps)
        losses.append(out.loss.reshape(1))
    return [t.detach().clone() for t in circuit.plastic_tensors()] + [torch.cat(losses)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from heterograd.distributed import DistributedTrainer, distributed_local_step

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        results = {}
        for rule_name in ("hsp", "fa", "poly"):

            def step(c, r, s, loss, x, y):
                return distributed_local_step(c, r, s, loss, x, y, rank=rank, world_size=world)

            results[rule_name] = _functional_run(rule_name, step)
        trainer = DistributedTrainer(TrainConfig(**CONFIG))  # type: ignore[arg-type]
        trainer.fit(Path(out_dir) / "run", progress=False)
        results["trainer"] = [t.detach().clone() for t in trainer.circuit.plastic_tensors()]
        results["trainer_losses"] = [row["train_loss"] for row in trainer.rows]
        # a stop signal that reaches rank 1 only: every rank must stop at the same step (0.1.0: rank 0 went on
        # and waited in the next all-reduce until the group timed out)
        stopper = DistributedTrainer(TrainConfig(**{**CONFIG, "epochs": 3}))  # type: ignore[arg-type]

        def on_log(row: dict, tr: DistributedTrainer = stopper) -> None:
            if rank == 1 and row["step"] >= 4 and tr._stop_signal is None:
                tr._stop_signal = signal.SIGTERM

        try:
            stopper.fit(Path(out_dir) / "stopped", progress=False, on_log=on_log, handle_signals=False)
            results["stopped_at"] = None
        except TrainingInterrupted as exc:
            results["stopped_at"] = (exc.step, exc.signum)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt"), out


@pytest.mark.parametrize("rule_name", ["hsp", "fa", "poly"])
def test_two_ranks_equal_single_process_on_combined_batch(two_rank_results, rule_name):
    r0, r1, _ = two_rank_results
    single = _functional_run(rule_name, local_step)
    for a, b, s in zip(r0[rule_name], r1[rule_name], single, strict=True):
        assert torch.equal(a, b), "ranks disagree"
        assert torch.allclose(a, s, atol=1e-12, rtol=0), float((a - s).abs().max())


def test_distributed_trainer_equals_trainer(two_rank_results):
    r0, r1, out = two_rank_results
    single = Trainer(TrainConfig(**CONFIG))  # type: ignore[arg-type]  # loads the data as each rank did
    single.fit(None, progress=False)
    for a, b, s in zip(r0["trainer"], r1["trainer"], single.circuit.plastic_tensors(), strict=True):
        assert torch.equal(a, b), "ranks disagree"
        assert torch.allclose(a, s, atol=1e-12, rtol=0), float((a - s).abs().max())
    expected = [row["train_loss"] for row in single.rows]
    assert r0["trainer_losses"] == pytest.approx(expected, abs=1e-12)
    assert (out / "run" / "summary.json").exists()  # rank 0 wrote the run directory


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(two_rank_results):
    r0, r1, out = two_rank_results
    assert r1["stopped_at"] is not None and r1["stopped_at"][1] == signal.SIGTERM
    assert r0["stopped_at"] == r1["stopped_at"]  # same step, same signal, no rank left waiting
    assert (out / "stopped" / "checkpoint.pt").exists()  # rank 0 wrote the checkpoint to resume from


def test_shard_bounds_cover_the_batch():
    for n in (2, 7, 25, 128):
        for world in (1, 2, 3):
            if n < world:
                continue
            parts = [shard_bounds(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    with pytest.raises(HeterogradError, match="batch-size"):
        shard_bounds(1, 0, 2)


def test_distributed_without_torchrun_gives_one_line_error(monkeypatch):
    from heterograd.distributed import init_distributed

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(HeterogradError, match="torchrun"):
        init_distributed("cpu")


@pytest.mark.slow
def test_torchrun_cli_equals_single_process(tmp_path):
    """The real launcher: `torchrun --nproc-per-node 2 -m heterograd.distributed ...` (gloo)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    args = ["--data", "digits", "--rule", "hsp", "--epochs", "1", "--n-train", "96", "--n-test", "40",
            "--batch-size", "32", "--hidden", "24,16", "--dtype", "float64", "--no-probes", "--no-progress",
            "--weight-decay", "1e-3", "--lr", "0.1", "--seed", "3", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    subprocess.run([*cmd, "-m", "heterograd.distributed", *args, "--out", str(tmp_path / "ddp")], check=True, env=env)
    import json

    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    single = Trainer(TrainConfig(**CONFIG)).fit(None, progress=False).summary  # type: ignore[arg-type]
    assert ddp["test_loss"] == pytest.approx(single["test_loss"], abs=1e-10)
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], abs=1e-10)
