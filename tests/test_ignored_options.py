"""An option that does not apply to the chosen rule or topology is an error, never silently ignored (issue 15.4).

The check lives where the configuration is validated (``TrainConfig.validate``, ``make_rule``,
``Circuit``), so the command line, the Python API and the experiments all get it; ``config.json``
records ``null`` for what does not apply, never an ignored value.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heterograd import Circuit
from heterograd.cli import main
from heterograd.errors import HeterogradError
from heterograd.rules import make_rule, rule_hyperparameters
from heterograd.train import TrainConfig

TINY = ["train", "--data", "digits", "--n-train", "64", "--n-test", "16", "--hidden", "8", "--epochs", "1"]
THETA = "1,0,0,0,0,0,0.001,0"

IGNORED = [
    (["--rule", "fa", "--feedback-gain", "1.0"], "--feedback-gain does not apply to rule 'fa'"),
    (["--rule", "bp", "--feedback-gain", "0.5"], "--feedback-gain does not apply to rule 'bp'"),
    (["--rule", "hsp", "--theta-w", THETA], "--theta-w does not apply to rule 'hsp'"),
    (["--rule", "fa", "--theta-b", THETA], "--theta-b does not apply to rule 'fa'"),
    (["--rule", "poly", "--theta-b", THETA, "--feedback-gain", "2"], "--feedback-gain has no effect on rule 'poly'"),
    (
        ["--rule", "poly", "--theta-w", THETA, "--theta-b", THETA, "--weight-decay", "0.01"],
        "--weight-decay has no effect on rule 'poly'",
    ),
    (["--density", "0.5"], "topology 'layered' has no mask"),
    (["--topology", "direct", "--density", "0.5"], "topology 'direct' has no mask"),
    (["--hidden", "8,8", "--topology", "direct", "--feedback-init", "anti"], "edges that skip layers"),
    (["--hidden", "8,8", "--topology", "amorphous", "--feedback-init", "transpose"], "edges that skip layers"),
]


@pytest.mark.parametrize(("extra", "message"), IGNORED, ids=[" ".join(c[0]) for c in IGNORED])
def test_cli_rejects_an_option_that_would_be_ignored(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*TINY, *extra, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert (message in err and "drop" in err) or "use --" in err, err
    assert not (tmp_path / "run").exists()  # nothing is written for a rejected configuration


@pytest.mark.parametrize(
    ("extra", "recorded"),
    [
        (["--rule", "fa"], {"weight_decay": 1e-4, "feedback_gain": None, "density": None}),
        (["--rule", "hsp"], {"weight_decay": 1e-4, "feedback_gain": 0.5, "density": None}),  # hsp's default c
        (["--rule", "hsp", "--topology", "sparse"], {"feedback_gain": 0.5, "density": 1.0}),
        (["--rule", "hsp", "--topology", "sparse", "--density", "0.3"], {"density": 0.3}),
        (
            ["--rule", "poly", "--theta-w", THETA, "--theta-b", THETA],
            {"weight_decay": None, "feedback_gain": None},
        ),
        (["--rule", "poly", "--theta-w", THETA], {"weight_decay": 1e-4, "feedback_gain": 1.0}),
        (["--topology", "direct", "--feedback-init", "anti"], {"feedback_init": "anti"}),  # one hidden layer: adjacent
    ],
)
def test_config_json_records_only_what_applies(extra, recorded, tmp_path):
    out = tmp_path / "run"
    main([*TINY, *extra, "--out", str(out), "--no-progress"])
    cfg = json.loads((out / "config.json").read_text())
    for k, v in recorded.items():
        assert cfg[k] == v, (k, cfg[k])


def test_python_api_gets_the_same_checks():
    with pytest.raises(HeterogradError, match="--feedback-gain does not apply to rule 'fa'"):
        make_rule("fa", feedback_gain=0.5)
    with pytest.raises(HeterogradError, match="--theta-w does not apply to rule 'hsp'"):
        make_rule("hsp", theta_w=[1.0] * 8)
    assert make_rule("fa", feedback_gain=None, weight_decay=1e-3).weight_decay == 1e-3  # None: not set
    with pytest.raises(HeterogradError, match="--feedback-gain does not apply"):
        TrainConfig(rule="fa", feedback_gain=1.0).validate()
    with pytest.raises(HeterogradError, match="no mask"):
        TrainConfig(density=0.2).validate()
    cfg = TrainConfig(rule="fa").validate()
    assert (cfg.weight_decay, cfg.feedback_gain, cfg.density) == (1e-4, None, None)
    with pytest.raises(HeterogradError, match="no mask"):
        Circuit([6, 5, 3], topology="layered", density=0.5)
    with pytest.raises(HeterogradError, match="skip layers"):
        Circuit([6, 5, 4, 3], topology="direct", feedback_init="anti")
    Circuit([6, 5, 3], topology="direct", feedback_init="anti")  # one hidden layer: the only edge is adjacent


def test_rule_hyperparameters_come_from_the_rule_itself():
    assert set(rule_hyperparameters("hsp")) == {"weight_decay", "feedback_gain"}
    assert set(rule_hyperparameters("fa")) == {"weight_decay"}
    assert {"theta_w", "theta_b", "weight_decay", "feedback_gain"} <= set(rule_hyperparameters("poly"))


def test_resume_is_not_tripped_by_defaults(tmp_path: Path):
    out = tmp_path / "run"
    main([*TINY, "--rule", "fa", "--out", str(out), "--no-progress", "--checkpoint-every", "1"])
    main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


# --------------------------------------------------------------------------- run folders (issue 15.5)
def test_train_refuses_a_folder_holding_an_earlier_run_and_overwrite_clears_it(tmp_path, capsys):
    out = tmp_path / "run"
    main([*TINY, "--rule", "fa", "--out", str(out), "--no-progress", "--checkpoint-every", "1"])
    assert (out / "checkpoint.pt").exists()
    before = (out / "config.json").read_text()
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--rule", "hsp", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is not empty" in err and "--overwrite" in err and "--resume" in err
    assert (out / "config.json").read_text() == before  # the earlier run is untouched
    main([*TINY, "--rule", "hsp", "--out", str(out), "--no-progress", "--overwrite"])
    assert not (out / "checkpoint.pt").exists()  # 0.1.0 left it behind, and --resume then resumed the OLD run
    assert json.loads((out / "config.json").read_text())["rule"] == "hsp"


def test_overwrite_never_clears_a_folder_that_is_not_a_run(tmp_path, capsys):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(SystemExit):
        main([*TINY, "--out", str(tmp_path), "--no-progress", "--overwrite"])
    assert "no heterograd run" in capsys.readouterr().err and keep.read_text() == "mine"
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path), "--overwrite"])
    assert "--overwrite would delete the run --resume continues" in capsys.readouterr().err


def test_a_0_1_0_config_with_ignored_values_still_resumes_as_unset():
    from heterograd.config import without_ignored_options

    old = {"rule": "fa", "topology": "layered", "weight_decay": 1e-4, "feedback_gain": 1.0, "density": 1.0}
    new = without_ignored_options(old)
    assert new == {**old, "feedback_gain": None, "density": None}
    TrainConfig(**{k: v for k, v in new.items()}).validate()  # no error: nothing set that would be ignored
    poly = {"rule": "poly", "topology": "sparse", "density": 0.5, "weight_decay": 1e-4, "feedback_gain": 1.0}
    poly |= {"theta_w": [1.0] + [0.0] * 7, "theta_b": [1.0] + [0.0] * 7}
    assert without_ignored_options(poly) | {} == {**poly, "weight_decay": None, "feedback_gain": None}
