"""``heterograd doctor --quick`` on the CPU (the CI mode): every CPU path checked, the CUDA parts skipped with why."""

from __future__ import annotations

import json

import pytest
import torch

from heterograd.bench import doctor
from heterograd.cli import main


def _run(args: list[str]) -> int:
    """The CLI's exit status (0 when it returns)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("doctor")
    rc = _run(["doctor", "--quick", "--device", "cpu", "--json", str(out / "d.json"), "--markdown", str(out / "d.md")])
    assert rc == 0, "a check failed (see the table above)"
    return json.loads((out / "d.json").read_text()), (out / "d.md").read_text()


def test_quick_doctor_checks_the_cpu_paths_and_passes(report):
    rep, md = report
    by = {c["name"]: c for c in rep["checks"]}
    ran = ["placement", "bp-equals-autograd", "learn-kp", "learn-hsp", "learn-kp-bf16-autocast", "bench-models",
           "bench-dense"]  # fmt: skip
    for name in ran:
        assert by[name]["status"] == "pass", by[name]
        assert by[name]["device"] == "cpu"
    assert "bf16" in by["bench-models"]["detail"] or "autocast" in by["bench-models"]["detail"]
    for c in rep["checks"]:
        assert c["status"] in ("pass", "skip"), c
        if c["status"] == "skip":
            assert c["detail"], "a skipped check says why"
    assert by["bench-models-compile"]["status"] == "skip" and "--quick" in by["bench-models-compile"]["detail"]
    if not torch.cuda.is_available():
        assert by["ddp-nccl"]["status"] == "skip" and "no CUDA device" in by["ddp-nccl"]["detail"]
    assert "| check | device | status | seconds | detail |" in md
    assert all(f"| {name} | cpu | pass |" in md for name in ran)


def test_a_check_that_raises_is_a_failure_and_the_exit_status_is_1(monkeypatch, tmp_path, capsys):
    def broken(device, quick, seed):
        raise RuntimeError("placement went wrong\nsecond line")

    monkeypatch.setattr(doctor, "check_placement", broken)
    monkeypatch.setattr(doctor, "make_learn_check", lambda *a, **k: lambda *a, **k: ("pass", "stub", {}))
    monkeypatch.setattr(doctor, "make_bench_check", lambda *a, **k: lambda *a, **k: ("pass", "stub", {}))
    monkeypatch.setattr(doctor, "check_dense_bench", lambda *a, **k: ("pass", "stub", {}))
    assert _run(["doctor", "--quick", "--device", "cpu", "--json", str(tmp_path / "d.json")]) == 1
    rep = json.loads((tmp_path / "d.json").read_text())
    row = next(c for c in rep["checks"] if c["name"] == "placement")
    assert row["status"] == "fail" and row["detail"] == "RuntimeError: placement went wrong"
    assert "1 check(s) failed: placement" in capsys.readouterr().err


def test_doctor_output_path_errors(tmp_path, capsys):
    assert _run(["doctor", "--quick", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]


def test_optimiser_state_tensors_are_found():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    assert len(list(doctor._tensors(opt.state_dict()["state"]))) == 3  # step, exp_avg, exp_avg_sq
