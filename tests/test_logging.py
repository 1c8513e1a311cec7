"""Logs (issue 13): bars only on a terminal, a few lines in a log; TensorBoard event files equal metrics.csv."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from heterograd.cli import main
from heterograd.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_a_log_gets_at_most_the_phase_lines_and_always_the_last():
    log = io.StringIO()
    bar = Progress(1000, "run", "step", lines=10, stream=log)
    for epoch in range(1, 101):
        bar.update(10, loss="1.0")
        bar.phase(epoch, 100, f"epoch {epoch}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines == [f"run: epoch {e}" for e in range(10, 101, 10)]
    short = io.StringIO()
    bar = Progress(3, "run", stream=short)
    for e in (1, 2, 3):
        bar.phase(e, 3, f"epoch {e}")
    assert short.getvalue().splitlines() == ["run: epoch 1", "run: epoch 2", "run: epoch 3"]


def test_a_terminal_gets_the_bar_and_no_lines_and_disabled_gets_nothing():
    term = _Terminal()
    bar = Progress(5, "run", "step", stream=term)
    for e in range(1, 6):
        bar.update(1)
        bar.phase(e, 5, f"epoch {e}")
    bar.close()
    assert "epoch" not in term.getvalue() and "run" in term.getvalue()  # the bar, drawn with its description
    quiet = io.StringIO()
    bar = Progress(5, "run", enabled=False, stream=quiet)
    bar.update(5)
    bar.phase(5, 5, "epoch 5")
    bar.close()
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_demo_piped_to_a_file_writes_a_short_log(tmp_path):
    """`heterograd demo > log.txt 2>&1`: a line per few epochs per rule and the table, no bar refreshes."""
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        subprocess.run(
            [sys.executable, "-m", "heterograd", "demo", "--out", str(tmp_path / "demo")],
            stdout=f,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=300,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
    lines = log.read_text().splitlines()
    assert len(lines) < 60, lines
    assert not any("\r" in ln or "it/s" in ln or "step/s" in ln for ln in lines)
    for rule in ("bp", "fa", "hsp"):
        assert f"{rule} on digits: epoch 20/20" in "\n".join(lines)
        assert any(ln.startswith(f"{rule} ") and len(ln.split()) >= 7 for ln in lines)  # its table row


def test_train_logs_a_line_per_few_epochs_off_a_terminal(capsys, tmp_path):
    argv = ["--epochs", "25", "--n-train", "64", "--n-test", "32", "--hidden", "8", "--no-probes"]
    code, _, err = run_cli(capsys, "train", *argv, "--out", str(tmp_path))
    assert code == 0
    expected = [f"hsp on digits: epoch {e}/25" for e in (3, 6, 9, 12, 15, 18, 21, 24, 25)]  # at most 10, the last
    assert [ln.split("  ")[0] for ln in err.splitlines()] == expected


def test_tensorboard_event_file_holds_metrics_csv_and_the_config(capsys, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ["--epochs", "2", "--n-train", "128", "--n-test", "64", "--hidden", "16,16", "--log-every", "2"]
    code, _, _ = run_cli(capsys, "train", *argv, "--no-progress", "--tensorboard", "--out", str(out))
    assert code == 0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    columns = [c for c in rows[0] if c not in ("step", "epoch")]
    assert {"train_loss", "test_loss", "test_accuracy", "phi_1", "phi_2", "align_1", "dc_score"} <= set(columns)
    assert set(acc.Tags()["scalars"]) == set(columns)
    for col in columns:
        logged = [(int(r["step"]), float(r[col])) for r in rows if r[col] not in ("", None)]
        events = [(e.step, e.value) for e in acc.Scalars(col)]
        assert [s for s, _ in events] == [s for s, _ in logged], col
        for (_, v), (_, w) in zip(events, logged, strict=True):
            assert v == pytest.approx(w, rel=1e-6, abs=1e-7), col  # event files store float32
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    recorded = json.loads((out / "config.json").read_text())
    assert json.loads(text.strip("`\n")) == json.loads(json.dumps(recorded, sort_keys=True))


def test_tensorboard_without_the_extra_is_one_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--tensorboard", "--out", str(tmp_path / "r"))
    assert code == 2 and "pip install 'heterograd[tensorboard]'" in err
    assert not (tmp_path / "r").exists()
