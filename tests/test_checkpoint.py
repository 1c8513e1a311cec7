"""Checkpoints: interrupt (real SIGTERM / SIGINT) and resume gives the uninterrupted run, bit for bit;
checkpoints load with ``weights_only=True`` and reject tampered, foreign, truncated or incompatible files."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from heterograd.checkpoint import CHECKPOINT_NAME, digest, load_checkpoint, save_checkpoint
from heterograd.cli import main
from heterograd.data import Dataset, load_dataset
from heterograd.errors import HeterogradError
from heterograd.optim import MOTIFS
from heterograd.train import TrainConfig, Trainer, TrainingInterrupted

# 512 digits, batches of 16 -> 32 steps per epoch; 12 epochs = 384 steps; a checkpoint every 16 steps
TOTAL_STEPS = 384
RUN_ARGS = [
    "train",
    "--data",
    "digits",
    "--rule",
    "hsp",
    "--n-train",
    "512",
    "--batch-size",
    "16",
    "--hidden",
    "32",
    "--epochs",
    "12",
    "--seed",
    "3",
    "--log-every",
    "16",
    "--no-probes",
    "--checkpoint-every",
    "16",
    "--no-progress",
]


def _without_timing(path: Path) -> bytes:
    """File bytes without the summary's one wall-clock line (``"wall_seconds"``); all else must match."""
    return b"".join(ln for ln in path.read_bytes().splitlines(keepends=True) if b'"wall_seconds":' not in ln)


def _files_equal(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert _without_timing(a / name) == _without_timing(b / name), f"{name} differs between {a} and {b}"


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["circuit"], load_checkpoint(b)["circuit"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (in-process CLI, same arguments as the interrupted subprocess)."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    main([*RUN_ARGS, "--out", str(ref)])
    return ref


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_real_signal_then_resume_equals_uninterrupted(sig: int, reference_run: Path, tmp_path: Path) -> None:
    """SIGTERM / SIGINT: clean stop at the current step, exit 128+signum. SIGKILL (no chance to clean up):
    the last periodic checkpoint is intact. Either way, resuming gives the uninterrupted run."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "heterograd.cli", *RUN_ARGS, "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ckpt = run / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before the first checkpoint: {proc.communicate()}"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    stopped_at = load_checkpoint(run)["step"]
    assert 16 <= stopped_at < TOTAL_STEPS, "the signal should land mid-run"
    if sig == signal.SIGKILL:
        assert proc.returncode == -sig
        assert stopped_at % 16 == 0, "only periodic checkpoints exist after a SIGKILL"
        # files in place are complete (a temp sibling may remain if the kill hit a write)
        json.loads((run / "config.json").read_text())
        lines = (run / "metrics.csv").read_text().splitlines()
        assert len({ln.count(",") for ln in lines}) == 1 and (run / "metrics.csv").read_text().endswith("\n")
    else:
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert "Traceback" not in err
        assert f"interrupted by {signal.Signals(sig).name}" in err and "--resume" in err
    assert not (run / "summary.json").exists(), "an interrupted run has no summary yet"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 2  # header + rows so far, complete lines only
    # resume (in-process CLI) and compare with the uninterrupted run
    main(["train", "--resume", str(run), "--no-progress"])
    _files_equal(run, reference_run, ("metrics.csv", "summary.json", "config.json"))
    _weights_equal(run, reference_run)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_dataset("digits", n_train=200, n_test=60)


def _cfg(**kw: object) -> TrainConfig:
    base = dict(data="digits", epochs=3, hidden=(24,), batch_size=16, seed=1, log_every=5, probes=False)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


CASES = [("hsp", "sgd", 7, True), ("poly", "sgd", 17, False), ("fa", "sgd", 12, False)]
CASES += [("hsp", m, 17, False) for m in ("momentum", "adam") if m in MOTIFS]


@pytest.mark.parametrize(("rule", "motif", "stop_at", "probes"), CASES)
def test_stop_mid_epoch_and_resume_is_exact(
    small: Dataset, tmp_path: Path, rule: str, motif: str, stop_at: int, probes: bool
) -> None:
    """A stop requested at a logged step (12 steps per epoch: mid-epoch or at its end) resumes exactly."""
    cfg = dict(rule=rule, optimizer=motif, lr=0.01 if motif == "adam" else 0.05, epochs=2, probes=probes)
    ref = Trainer(_cfg(**cfg), small).fit(tmp_path / "ref", progress=False)

    tr = Trainer(_cfg(**cfg), small)

    def stop(row: dict) -> None:
        if row["step"] >= stop_at:
            tr._stop_signal = signal.SIGINT  # what the signal handler does

    with pytest.raises(TrainingInterrupted) as info:
        tr.fit(tmp_path / "run", progress=False, on_log=stop)
    assert info.value.checkpoint == tmp_path / "run" / CHECKPOINT_NAME
    assert load_checkpoint(tmp_path / "run")["step"] == info.value.step
    res = Trainer.resume(tmp_path / "run", small).fit(tmp_path / "run", progress=False)
    assert res.rows == ref.rows
    for a, b in zip(res.circuit.plastic_tensors(), ref.circuit.plastic_tensors(), strict=True):
        assert torch.equal(a, b)
    _files_equal(tmp_path / "run", tmp_path / "ref", ("metrics.csv", "summary.json"))


def test_periodic_checkpoints_and_training_longer(small: Dataset, tmp_path: Path) -> None:
    """--checkpoint-every K writes at multiples of K and at the end; resuming with more epochs = longer run."""
    steps: list[int] = []
    tr = Trainer(_cfg(epochs=2, checkpoint_every=5), small)
    orig = tr.save_checkpoint

    def spy(out: Path) -> Path:
        steps.append(tr.step_count)
        return orig(out)

    tr.save_checkpoint = spy  # type: ignore[method-assign]
    tr.fit(tmp_path / "a", progress=False)
    assert steps == [5, 10, 15, 20, 24]
    longer = Trainer.resume(tmp_path / "a", small, epochs=4).fit(tmp_path / "a", progress=False)
    straight = Trainer(_cfg(epochs=4, checkpoint_every=5), small).fit(tmp_path / "b", progress=False)
    assert longer.rows == straight.rows
    assert longer.summary["test_loss"] == straight.summary["test_loss"]


def test_resume_with_incompatible_config_names_the_field(small: Dataset, tmp_path: Path) -> None:
    Trainer(_cfg(epochs=1, checkpoint_every=100), small).fit(tmp_path, progress=False)
    with pytest.raises(HeterogradError, match=r"lr: 0\.05 in the checkpoint, 0\.1 now") as info:
        Trainer.resume(tmp_path, small, lr=0.1)
    assert "\n" not in str(info.value)
    with pytest.raises(HeterogradError, match="hidden"):
        Trainer.resume(tmp_path, small, hidden=(8,))
    shifted = dataclasses.replace(small, x_train=small.x_train + 1e-3)
    with pytest.raises(HeterogradError, match="training data differ"):
        Trainer.resume(tmp_path, shifted)
    other = load_dataset("digits", n_train=190, n_test=60)
    with pytest.raises(HeterogradError, match="differ"):
        Trainer.resume(tmp_path, other)


def test_cli_resume_errors_are_one_line(small: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Trainer(_cfg(epochs=1, checkpoint_every=100, n_train=200, n_test=60)).fit(tmp_path / "r", progress=False)
    cases = [
        (["train", "--resume", str(tmp_path / "nowhere")], "does not exist"),
        (["train", "--resume", str(tmp_path)], f"no {CHECKPOINT_NAME}"),
        (["train", "--resume", str(tmp_path / "r"), "--lr", "0.2"], "lr: 0.05 in the checkpoint, 0.2 now"),
        (["train", "--resume", str(tmp_path / "r"), "--out", str(tmp_path / "x")], "different folders"),
    ]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, err


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/heterograd-pwned",))


def test_tampered_foreign_and_truncated_files_are_refused(small: Dataset, tmp_path: Path) -> None:
    Trainer(_cfg(epochs=1, checkpoint_every=100), small).fit(tmp_path / "ok", progress=False)
    good = (tmp_path / "ok" / CHECKPOINT_NAME).read_bytes()
    target = tmp_path / "bad" / CHECKPOINT_NAME
    target.parent.mkdir()
    marker = Path("/tmp/heterograd-pwned")
    marker.unlink(missing_ok=True)

    # code smuggled into a checkpoint: refused by weights_only loading, never executed
    ck = torch.load(tmp_path / "ok" / CHECKPOINT_NAME, weights_only=True)
    ck["rule_state"] = _Evil()
    torch.save(ck, target)
    with pytest.raises(HeterogradError, match="refusing to load"):
        load_checkpoint(target)
    assert not marker.exists()

    # a plain pickle, random bytes, a truncated checkpoint, a foreign torch file, a future version
    target.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(HeterogradError, match=r"cannot read checkpoint|refusing"):
        load_checkpoint(target)
    target.write_bytes(os.urandom(2000))
    with pytest.raises(HeterogradError, match=r"corrupt or truncated|not a heterograd checkpoint or was tampered"):
        load_checkpoint(target)
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(HeterogradError, match="corrupt or truncated"):
        load_checkpoint(target)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, target)
    with pytest.raises(HeterogradError, match="not a heterograd checkpoint"):
        load_checkpoint(target)
    torch.save({**ck, "rule_state": None, "version": 99}, target)
    with pytest.raises(HeterogradError, match="version 99"):
        load_checkpoint(target)
    del ck["rows"]
    ck["rule_state"] = None
    torch.save(ck, target)
    with pytest.raises(HeterogradError, match="lacks rows"):
        load_checkpoint(target)
    # weights edited after the fact: the digest no longer matches
    ck = torch.load(tmp_path / "ok" / CHECKPOINT_NAME, weights_only=True)
    ck["circuit"]["W.0"] = ck["circuit"]["W.0"] * 1.001
    torch.save(ck, target)
    with pytest.raises(HeterogradError, match="fails its integrity check"):
        load_checkpoint(target)
    # a well-formed checkpoint whose weights do not fit the circuit of its own config
    ck["circuit"]["W.0"] = torch.zeros(3, 3)
    save_checkpoint(target, {k: v for k, v in ck.items() if k not in ("format", "version", "digest")})
    with pytest.raises(HeterogradError, match="does not fit this circuit"):
        Trainer.resume(tmp_path / "bad", small)


def test_bit_flips_never_load_silently_wrong(small: Dataset, tmp_path: Path) -> None:
    """Every single-bit corruption either is refused with a clear error or leaves the contents intact."""
    Trainer(_cfg(epochs=1, checkpoint_every=100), small).fit(tmp_path / "ok", progress=False)
    good = (tmp_path / "ok" / CHECKPOINT_NAME).read_bytes()
    intact = digest(load_checkpoint(tmp_path / "ok"))
    target = tmp_path / "bad" / CHECKPOINT_NAME
    target.parent.mkdir()
    rng = random.Random(0)
    refused = 0
    for _ in range(60):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(b))
        try:
            assert digest(load_checkpoint(target)) == intact
        except HeterogradError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert refused > 30


def test_checkpoint_writes_are_atomic(small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half-way leaves the previous complete checkpoint and no temp files."""
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"x": torch.arange(3)})
    before = path.read_bytes()

    def dying_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.arange(5)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_unstorable_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HeterogradError, match="not storable safely"):
        save_checkpoint(tmp_path / CHECKPOINT_NAME, {"rule_state": {"f": lambda: 0}})
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_second_signal_stops_at_once_and_handlers_are_restored(small: Dataset) -> None:
    tr = Trainer(_cfg(epochs=1), small)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), tr._signals_stop_training(True):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert tr._stop_signal == signal.SIGTERM  # first signal: a request, training goes on
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        pytest.fail("the second signal should have interrupted at once")
    assert signal.getsignal(signal.SIGINT) is before
