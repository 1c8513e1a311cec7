"""Controls that separate the theory from its absence (issue 20): every verdict fed numbers for which it must be
false as well as true, the frozen-B / c = -1 / stuck-device controls, counts beside aggregates, the bp variant
with its own feedback array, and the rewire ablation's pre-stated judgement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from heterograd import TrainConfig
from heterograd.experiments import dynamics as dyn
from heterograd.experiments import hardware as hw
from heterograd.experiments import plasticity_curve as pc
from heterograd.experiments import rewire as rw
from heterograd.experiments import rewire_ablation as abl
from heterograd.experiments.base import trainer_with


# --------------------------------------------------------------------------- dynamics: panels and controls
def _run(db, align, phi, hebb, *, diverged=False, T=12):
    """One synthetic run of ``dynamics._one_run``'s shape: series rising/falling linearly over ``T`` points."""

    def ramp(a, b):
        return list(np.linspace(a, b, T))

    dbs = [math.nan, *ramp(db[0], db[1])[1:]]
    series = {"step": list(range(T)), "dB": dbs, "align": ramp(*align), "phi": ramp(*phi), "hebb": ramp(*hebb)}
    phis = [[p] * len(dyn.HIDDEN) for p in ramp(*phi)]
    return {"series": series, "phis": phis, "diverged": diverged, "test_accuracy": 0.5}


PLASTIC = {"db": (3.0, 0.1), "align": (0.0, 0.95), "phi": (0.01, 1.0), "hebb": (0.5, 0.75)}
FROZEN = {"db": (0.0, 0.0), "align": (0.0, 0.35), "phi": (0.01, 0.4), "hebb": (0.5, 0.7)}


def test_dynamics_panels_pass_for_plastic_feedback_and_fail_where_they_must():
    j = dyn.judge_runs([_run(**PLASTIC), _run(**PLASTIC)])
    assert all(j[k] for k in dyn.PANEL_KEYS), j
    assert j["runs"] == 2 and j["diverged"] == 0
    # B never moved: 0 <= 0 is no evidence of settling (the old test passed it)
    j = dyn.judge_runs([_run(**FROZEN)])
    assert not j["B_moved"] and not j["dB_settles"]
    # alignment that rises by 0.5 but ends at 0.5 does not reach the paper's 0.8
    j = dyn.judge_runs([_run(**{**PLASTIC, "align": (0.0, 0.5)})])
    assert not j["align_rises"] and j["dB_settles"]
    # |ΔB| that does not settle
    assert not dyn.judge_runs([_run(**{**PLASTIC, "db": (3.0, 3.0)})])["dB_settles"]
    # a φ that turns negative at one point
    r = _run(**PLASTIC)
    r["phis"][5][1] = -0.1
    assert not dyn.judge_runs([r])["phi_one_sign"]
    # a diverged run fails every panel of its circuit
    j = dyn.judge_runs([_run(**PLASTIC), _run(**PLASTIC, diverged=True)])
    assert not any(j[k] for k in dyn.PANEL_KEYS) and j["diverged"] == 1


def test_frozen_control_must_fail_db_and_alignment_and_may_pass_the_rest():
    assert dyn.MUST_FAIL_FROZEN == ("dB_settles", "align_rises")
    v = dyn.control_verdicts(dyn.judge_runs([_run(**FROZEN)]), dyn.MUST_FAIL_FROZEN)
    assert v["control_fails_as_required"]
    assert v["verdict_per_panel"] == {
        "dB_settles": "fails",
        "align_rises": "fails",
        "phi_one_sign": "passes",
        "hebb_rises": "passes",
    }
    # a frozen control whose alignment reaches 0.95: the claim about plastic B is not supported
    v = dyn.control_verdicts(dyn.judge_runs([_run(**{**FROZEN, "align": (0.0, 0.95)})]), dyn.MUST_FAIL_FROZEN)
    assert not v["control_fails_as_required"] and v["verdict_per_panel"]["align_rises"] == "passes"
    # a diverged control is reported as diverged and supports nothing, although its panels "fail"
    v = dyn.control_verdicts(dyn.judge_runs([_run(**FROZEN), _run(**FROZEN, diverged=True)]), dyn.MUST_FAIL_FROZEN)
    assert set(v["verdict_per_panel"].values()) == {"diverged"} and not v["control_fails_as_required"]


def test_c_minus_one_control_must_fail_phi_and_a_diverged_one_supports_nothing():
    alternating = _run(**PLASTIC)
    alternating["phis"] = [[-0.1, 0.2, -0.3]] * len(alternating["phis"])
    v = dyn.control_verdicts(dyn.judge_runs([alternating]), dyn.MUST_FAIL_C_MINUS_1)
    assert v["control_fails_as_required"]
    v = dyn.control_verdicts(dyn.judge_runs([_run(**PLASTIC)]), dyn.MUST_FAIL_C_MINUS_1)
    assert not v["control_fails_as_required"]
    v = dyn.control_verdicts(dyn.judge_runs([{**alternating, "diverged": True}]), dyn.MUST_FAIL_C_MINUS_1)
    assert not v["control_fails_as_required"] and v["verdict_per_panel"]["phi_one_sign"] == "diverged"


def test_frozen_controls_are_the_deciding_circuits_under_fa():
    assert set(dyn.FROZEN) == set(dyn.DECIDING)
    for name, wiring in dyn.FROZEN.items():
        assert wiring == {**dyn.TOPOLOGIES[name], "rule": "fa"}


# --------------------------------------------------------------------------- plasticity: frozen-B control
def test_plasticity_frozen_control_must_fail_the_sign_test():
    ok = {"holds": True}
    bad = {"holds": False}
    moves = {"thresholds_move": True}
    v = pc.frozen_control_verdict(moves, bad, diverged=0)
    assert v["control_fails_as_required"] and v["verdict_per_condition"]["thresholds_move"] == "passes"
    assert not pc.frozen_control_verdict(moves, ok, diverged=0)["control_fails_as_required"]
    v = pc.frozen_control_verdict(moves, bad, diverged=1)
    assert not v["control_fails_as_required"] and set(v["verdict_per_condition"].values()) == {"diverged"}


def test_plasticity_threshold_shift_and_sign_match():
    n = 12
    theta0 = np.linspace(1.0, 2.0, n)
    cat = {"init": {"theta": theta0}, "learned": {"theta": theta0 + 0.5}}
    assert pc.threshold_shift(cat)["thresholds_move"]
    assert not pc.threshold_shift({"init": {"theta": theta0}, "learned": {"theta": theta0 + 0.1}})["thresholds_move"]
    few = {"init": {"theta": theta0}, "learned": {"theta": np.where(np.arange(n) < 3, theta0 + 1, np.nan)}}
    assert not pc.threshold_shift(few)["thresholds_move"]  # fewer than MIN_NEURONS curves with both thresholds
    s = {"theta": theta0, "theta_grad": theta0, "sign_agree": np.full(n, 0.9)}
    assert pc._match(s)["holds"]
    assert not pc._match({**s, "sign_agree": np.full(n, 0.6)})["holds"]


# --------------------------------------------------------------------------- hardware: stuck devices, bp_array
def test_stuck_case_is_judged_both_ways():
    ref = {"hsp": 0.95, "bp": 1.0, "bp_array": 1.0}
    stuck = {"hsp": [0.8, 0.5, 0.2], "bp": [1.0, 1.0, 1.0], "bp_array": [0.9, 0.6, 0.3]}
    ok = hw.judge_stuck_case(ref, stuck, {"hsp": 0, "bp": 0})
    assert ok["as_predicted"] and ok["verdict"] == "as predicted"
    assert ok["bp_array_align_fall"] == pytest.approx(0.7)
    flat = hw.judge_stuck_case(ref, {**stuck, "hsp": [0.94, 0.93, 0.9]}, {"hsp": 0, "bp": 0})
    assert not flat["as_predicted"] and not flat["hsp_align_falls"]
    bp_falls = hw.judge_stuck_case(ref, {**stuck, "bp": [1.0, 0.95, 0.9]}, {"hsp": 0, "bp": 0})
    assert not bp_falls["as_predicted"] and not bp_falls["bp_align_stays_1"]
    nan = hw.judge_stuck_case(ref, {**stuck, "hsp": [0.8, 0.5, math.nan]}, {"hsp": 0, "bp": 0})
    assert not nan["as_predicted"]
    div = hw.judge_stuck_case(ref, stuck, {"hsp": 1, "bp": 0})
    assert div == {"verdict": "diverged", "as_predicted": False}


def _sweep_runs(align_hsp_stuck: float, diverge_hsp: bool = False) -> list[dict]:
    sweeps = {"read_noise": (1.0,), "levels": (8,), "asymmetry": (0.2,), "stuck_fraction": (0.1, 0.5)}
    runs = []
    for rule in hw.ALL_RULES:
        for seed in (0, 1):
            base = {"rule": rule, "seed": seed, "phi": 1.0, "diverged": False}
            runs.append({**base, "sweep": "plain", "value": None, "test_accuracy": 0.8, "align": 1.0})
            runs.append({**base, "sweep": "reference", "value": 0, "test_accuracy": 0.8, "align": 0.95})
            for s, values in sweeps.items():
                for v in values:
                    acc = {"hsp": 0.7, "bp": 0.79, "bp_array": 0.72, "fa": 0.7}[rule]
                    al = {"hsp": align_hsp_stuck, "bp": 1.0, "bp_array": 0.4, "fa": 0.3}[rule]
                    r = {**base, "sweep": s, "value": v, "test_accuracy": acc, "align": al if v == 0.5 else 0.9}
                    if rule == "bp" and s == "stuck_fraction":
                        r["align"] = 1.0
                    if diverge_hsp and rule == "hsp" and s == "stuck_fraction" and seed == 1:
                        r.update(diverged=True, test_accuracy=hw.CHANCE, align=math.nan)
                    runs.append(r)
    return runs, sweeps


def test_sweep_analysis_reports_equal_exposure_stuck_case_and_counts():
    runs, sweeps = _sweep_runs(0.2)
    a = hw.SweepAnalysis(runs, sweeps)
    m = a.measured()
    assert a.rules == hw.ALL_RULES
    assert m["runs_per_point"] == dict.fromkeys(hw.ALL_RULES, 2)
    assert m["stuck_case"]["as_predicted"]
    # hsp loses 10 points, bp 1, bp_array 8, fa 10
    assert all(v["bp"] == "less graceful" for v in m["hsp_vs"].values())
    assert all(v["fa"] == "alike" for v in m["hsp_vs"].values())
    assert m["hsp_vs_bp_array"] == dict.fromkeys(sweeps, "less graceful")
    assert "bp_array" not in {x.split(" vs ")[1] for x in a.less}  # the verdict keeps its rivals bp and fa
    lines = "\n".join(hw.sweep_comparison_lines(a))
    assert "hsp vs bp_array" in lines and "as predicted" in lines
    # hsp's align does not fall: the prediction fails; a diverged hsp run in the stuck sweep: diverged
    assert not hw.SweepAnalysis(*_sweep_runs(0.9)).stuck_case["as_predicted"]
    d = hw.SweepAnalysis(*_sweep_runs(0.2, diverge_hsp=True))
    assert d.stuck_case["verdict"] == "diverged" and d.diverged["hsp"] == 2


def test_bp_array_is_backprop_on_ideal_devices_dense(digits):
    """hsp with c = 1, B(0) = W(0)ᵀ and equal decay follows bp's trajectory (docs/theory.md section 4.1)."""
    kw = {"data": "digits", "hidden": (16,), "epochs": 1, "seed": 3, "probes": False, "n_train": 256}
    a = trainer_with(TrainConfig(**kw, rule="bp"), digits)
    b = trainer_with(TrainConfig(**kw, **hw.rule_options(hw.BP_ARRAY)), digits)
    a.fit(progress=False)
    b.fit(progress=False)
    for wa, wb in zip(a.circuit.W, b.circuit.W, strict=True):
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)
    # and a rule that is not bp does not
    c = trainer_with(TrainConfig(**kw, rule="hsp"), digits)
    c.fit(progress=False)
    assert not torch.allclose(a.circuit.W[0], c.circuit.W[0], atol=1e-3)


def test_bp_array_is_backprop_on_ideal_devices_lenet():
    from heterograd.experiments.hardware_lenet import train_lenet

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    data = (x, y, x[:32], y[:32])
    a = train_lenet("bp", 0, {}, data, 1)
    b = train_lenet(hw.BP_ARRAY, 0, {}, data, 1)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert b["align"] == pytest.approx(1.0, abs=1e-3)  # its own B stays Wᵀ on an ideal array
    s = train_lenet(hw.BP_ARRAY, 0, {"stuck_fraction": 0.5}, data, 1)
    assert s["align"] < 0.95  # on stuck devices its own B is no longer Wᵀ: equal exposure


# --------------------------------------------------------------------------- rewire: counts beside medians
def _rewire_run(rt, final, diverged=False, seed=0):
    if rt is None:
        return {"rule": "hsp", "seed": seed, "rt": None, "final": final, "diverged": diverged}
    return {
        "rule": "hsp",
        "seed": seed,
        "rt": rt,
        "pre_swap": 0.5,
        "at_swap": 0.1,
        "first_epoch_min": 0.1,
        "first_eval": 0.3,
        "epochs_to_recover_90": None if diverged else 1.0,
        "scratch_epochs_to_same_level": 2.0,
        "final": math.nan if diverged else final,
        "diverged": diverged,
    }


def test_rewire_medians_carry_their_counts():
    runs = [_rewire_run(None, 0.6, seed=s) for s in range(3)]
    runs += [_rewire_run(0, 0.6, seed=s) for s in range(3)]
    runs += [_rewire_run(5, 0.55, seed=0), _rewire_run(5, 0.57, seed=1), _rewire_run(5, 0.0, diverged=True, seed=2)]
    st = rw.rule_statistics(runs, (0, 5), 200, 0)
    t5 = st["by_rt"]["5"]
    assert t5["runs"] == 3 and t5["diverged"] == 1
    assert t5["median_final"] == pytest.approx(0.56)  # over the two finite runs, with the count beside it
    assert math.isnan(t5["mean_std"][0])  # a mean never averages a diverged run away
    assert st["by_rt"]["none"] == {**st["by_rt"]["none"], "runs": 3, "diverged": 0}
    assert st["rank_test_pairs"] == 6 and st["rank_test_diverged_as_0"] == 1
    assert not st["all_recover"]


# --------------------------------------------------------------------------- rewire ablation: judged as stated
def test_cosine_schedule_continues_after_the_original_run():
    eta = abl.cosine_schedule(10, lr=0.1, fraction=0.01)
    assert eta(0) == pytest.approx(0.1)
    assert eta(5) == pytest.approx(0.001 + 0.099 / 2)
    assert eta(10) == eta(30) == pytest.approx(0.001)
    assert all(eta(t) >= eta(t + 1) for t in range(12))


def _cond(rho, p, first, last, recovers=True, diverged=0):
    table = {"0": {"median_final": first, "diverged": diverged}, "20": {"median_final": last, "diverged": 0}}
    table["none"] = {"median_final": first, "diverged": 0}
    stats = {
        "spearman_rt_final": rho,
        "permutation_p": p,
        "late_costs_more": rho <= rw.RHO_MAX and p <= rw.P_MAX,
        "recovered": "6/6" if recovers else "3/6",
        "all_recover": recovers,
        "by_rt": table,
    }
    return abl.judge_condition(stats, (0, 20))


def test_ablation_verdicts_can_be_true_and_false():
    flat = _cond(-0.1, 0.3, 0.60, 0.60)
    decline = _cond(-0.6, 0.001, 0.60, 0.48)
    assert not flat["decline"] and decline["decline"]
    assert not _cond(-0.6, 0.001, 0.60, 0.58)["decline"]  # significant but smaller than DROP_MIN
    assert not _cond(-0.2, 0.2, 0.60, 0.45)["decline"]  # large but not a rank decline
    assert abl.judge_hypothesis(decline, flat) == "reproduces the paper's decline"
    assert abl.judge_hypothesis(flat, flat) == "no decline"
    assert abl.judge_hypothesis(decline, decline).startswith("declines, but so does the baseline")
    assert abl.judge_hypothesis(_cond(-0.6, 0.001, 0.6, 0.3, recovers=False), flat).startswith(
        "declines, but does not recover"
    )
    assert abl.judge_hypothesis(_cond(-0.6, 0.001, 0.6, 0.3, diverged=1), flat).startswith("not judged")


@pytest.mark.slow
def test_quick_rewire_ablation_reports_every_condition_with_counts(tmp_path):
    from heterograd.experiments import run_experiment

    s = run_experiment("rewire-ablation", tmp_path, quick=True)
    assert "error" not in s, s.get("traceback")
    m = s["measured"]
    assert set(m["conditions"]) == set(abl.CONDITIONS) and len(m["hypotheses"]) == 2
    for c in abl.CONDITIONS:
        assert all({"runs", "diverged"} <= set(t) for t in m["by_condition"][c]["by_rt"].values())
    assert s["holds"] == bool(m["reproduces"])
    assert "n=" in (tmp_path / "rewire-ablation" / "ablation.md").read_text()
