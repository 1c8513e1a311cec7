"""Config files (issue 13): ``--config FILE`` for train, evolve and bench; a run's config.json reruns it."""

from __future__ import annotations

import json

import pytest

from heterograd.cli import main
from heterograd.config import RECORDED_ONLY, TrainConfig, load_config_file
from heterograd.errors import HeterogradError

SMALL = ["--epochs", "2", "--n-train", "128", "--n-test", "64", "--hidden", "16", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _summary(path) -> dict:
    """summary.json without its timing fields (wall time; an evolution's last row also has its seconds)."""
    s = json.loads((path / "summary.json").read_text())
    s.pop("wall_seconds")
    if isinstance(s.get("final"), dict):
        s["final"].pop("seconds", None)
    return s


def test_config_json_of_a_run_reruns_it(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["--rule", "hsp", "--optimizer", "adam", "--lr", "1e-3", "--betas", "0.9,0.99", "--seed", "3"]
    assert run_cli(capsys, "train", *SMALL, *argv, "--out", str(a))[0] == 0
    assert run_cli(capsys, "train", "--config", str(a / "config.json"), "--out", str(b))[0] == 0
    assert _summary(a) == _summary(b)
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    rec_a, rec_b = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert {k: v for k, v in rec_a.items() if k != "environment"} == {
        k: v for k, v in rec_b.items() if k != "environment"
    }


def test_command_line_options_override_the_file(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('rule = "fa"\nepochs = 1\nhidden = [8]\nn_train = 64\nn_test = 32\nlr = 0.1\nprobe_size = 16\n')
    out = tmp_path / "r"
    assert run_cli(capsys, "train", "--config", str(cfg), "--lr", "0.02", "--no-progress", "--out", str(out))[0] == 0
    rec = json.loads((out / "config.json").read_text())
    assert rec["rule"] == "fa" and rec["hidden"] == [8] and rec["probe_size"] == 16  # from the file
    assert rec["lr"] == 0.02  # the command line wins
    assert rec["epochs"] == 1 and rec["seed"] == 0  # options left at their defaults do not override the file


def test_toml_yaml_and_json_give_the_same_config(tmp_path):
    (tmp_path / "c.toml").write_text('rule = "hsp"\nhidden = [32, 32]\nweight_decay = 1e-4\noptimizer_options = {}\n')
    (tmp_path / "c.yaml").write_text("rule: hsp\nhidden: [32, 32]\nweight_decay: 1e-4\noptimizer_options: {}\n")
    (tmp_path / "c.json").write_text(
        '{"rule": "hsp", "hidden": [32, 32], "weight_decay": 1e-4, "optimizer_options": {}}'
    )
    loaded = [load_config_file(tmp_path / f"c.{ext}") for ext in ("toml", "yaml", "json")]
    assert (
        loaded[0]
        == loaded[1]
        == loaded[2]
        == {
            "rule": "hsp",
            "hidden": (32, 32),
            "weight_decay": 1e-4,
            "optimizer_options": {},
        }
    )
    TrainConfig(**loaded[0]).validate()


def test_recorded_only_keys_are_ignored_and_nothing_else(tmp_path):
    assert {"environment", "rule_equation", "data_source"} == RECORDED_ONLY  # data_source: what a text run read
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"rule": "fa", "environment": {"torch": "x"}, "rule_equation": "ΔW = ..."}))
    assert load_config_file(p) == {"rule": "fa"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"lr": 0.1, "learning_rate": 0.1}', "unknown key 'learning_rate'"),
        ('{"epocs": 3}', "unknown key 'epocs'; did you mean 'epochs'?"),
        ('{"lr": "fast"}', "key 'lr' must be a number or null, got 'fast'"),
        ('{"epochs": 2.5}', "key 'epochs' must be an integer"),
        ('{"probes": "yes"}', "key 'probes' must be true or false"),
        ('{"hidden": [16, "x"]}', "key 'hidden' must be a list"),
        ('{"optimizer_options": [1]}', "key 'optimizer_options' must be a table"),
        ("[1, 2]", "the top level must be a table"),
        ('{"lr": ', "not valid JSON"),
    ],
)
def test_bad_config_file_is_one_clear_error_naming_the_key(capsys, tmp_path, text, needle):
    p = tmp_path / "c.json"
    p.write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", str(p), "--out", str(tmp_path / "r"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --config"), err
    assert needle in lines[0]
    assert not (tmp_path / "r").exists()


def test_wrong_suffix_missing_file_and_resume_conflict(capsys, tmp_path):
    with pytest.raises(HeterogradError, match=r"unknown file type '\.ini'"):
        load_config_file(tmp_path / "c.ini")
    with pytest.raises(HeterogradError, match="cannot read it"):
        load_config_file(tmp_path / "missing.toml")
    (tmp_path / "c.yaml").write_text("rule: [unclosed\n")
    with pytest.raises(HeterogradError, match="not valid YAML"):
        load_config_file(tmp_path / "c.yaml")
    (tmp_path / "c.toml").write_text("epochs = 1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "c.toml"), "--resume", str(tmp_path))
    assert code == 2 and "--config and --resume" in err


def test_evolve_config_json_reruns_the_evolution(capsys, tmp_path):
    small = ["--population", "4", "--generations", "2", "--steps", "10", "--ref-circuits", "2", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(capsys, "evolve", *small, "--seed", "5", "--out", str(a))[0] == 0
    assert run_cli(capsys, "evolve", "--config", str(a / "config.json"), "--out", str(b))[0] == 0
    assert _summary(a) == _summary(b)
    c = tmp_path / "c"
    assert run_cli(capsys, "evolve", "--config", str(a / "config.json"), "--generations", "1", "--out", str(c))[0] == 0
    rec = json.loads((c / "config.json").read_text())
    assert rec["generations"] == 1 and rec["population"] == 4 and rec["seed"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("population: 4\nselection_fraction: 0.5\n")
    code, _, err = run_cli(capsys, "evolve", "--config", str(bad), "--out", str(tmp_path / "d"))
    assert code == 2 and "unknown key 'selection_fraction'" in err


def test_bench_takes_a_config_file(capsys, tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text(
        'sizes = "8,8,4@4"\nimpls = ["hsp"]\ndtypes = ["float32"]\nrepeats = 5\nblock_seconds = 0.001\n'
        "warmup_steps = 1\nmemory = false\n"
    )
    assert run_cli(capsys, "bench", "--config", str(cfg), "--repeats", "3", "--out", str(tmp_path / "o"))[0] == 0
    rec = json.loads((tmp_path / "o" / "bench.json").read_text())["config"]
    assert rec["sizes"] == [[[8, 8, 4], 4]] and rec["impls"] == ["bp-autograd", "hsp"] and rec["memory"] is False
    assert rec["repeats"] == 3  # the command line wins
    cfg.write_text("repeats = 'many'\n")
    code, _, err = run_cli(capsys, "bench", "--config", str(cfg), "--out", str(tmp_path / "o2"))
    assert code == 2 and "key 'repeats' must be an integer" in err
