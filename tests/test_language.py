"""Character-level language modelling: text data, --model gpt, heterograd sample, repro language (issue 21)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
from collections import Counter

import pytest
import torch

from heterograd import HeterogradError, convert
from heterograd.cli import main
from heterograd.config import TrainConfig, load_config_file
from heterograd.data.sequences import IGNORE
from heterograd.data.text import SPLITS, load_text, random_windows, windows
from heterograd.models import GPT, GPTConfig
from heterograd.train import TrainingInterrupted
from heterograd.train_module import ModuleTrainer, sample_text

WORDS = ["def", "return", "if", "else", "for", "in", "range", "x", "y", "print", "class", "self", "import", "None"]
SMALL = {"layers": 1, "heads": 2, "dim": 32, "block": 32}


def make_text(n_lines: int = 1500, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def text_config(path, **kw) -> TrainConfig:
    base = dict(data=f"text:{path}", model="gpt", model_options=dict(SMALL), rule="kp", optimizer="adam", lr=3e-3,
                batch_size=16, epochs=2, n_train=16 * 10, n_test=16, probe_size=4, seed=0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------- data
def test_text_splits_vocab_and_unknown_characters(tmp_path):
    train_part = "ab\n" * 300  # 900 characters
    rest = "abz" * 33 + "a"  # 100 characters: 'z' never occurs in the training part
    p = tmp_path / "t.txt"
    p.write_text(train_part + rest, encoding="utf-8")
    c = load_text(f"text:{p}", block=8)
    n = 1000
    assert (c.train.numel(), c.val.numel(), c.test.numel()) == (int(n * SPLITS[0]), 50, 50)
    assert c.vocab == ("<unk>", "\n", "a", "b")  # from the training part only, <unk> first
    assert c.unknown["val"] + c.unknown["test"] == 33 and c.unknown["val"] > 0
    assert c.decode(c.train[:3]) == "ab\n"
    _, y = windows(c.val, 8)
    assert int((y == IGNORE).sum()) == int((c.val[1 : 1 + y.numel()] == 0).sum())  # unknown targets carry no loss
    assert c.source["sha256"] and c.source["kind"] == "file"


def test_folder_is_read_in_sorted_order_of_text_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("Z" * 400, encoding="utf-8")
    (tmp_path / "a.md").write_text("A" * 400, encoding="utf-8")
    (tmp_path / "c.txt").write_text("C" * 400, encoding="utf-8")
    (tmp_path / "d.bin").write_bytes(b"\x00\x01" * 100)  # not a text suffix: skipped
    c = load_text(f"text:{tmp_path}", block=8)
    text = c.decode(torch.cat([c.train, c.val, c.test]))
    assert text == "A" * 400 + "Z" * 400 + "C" * 400
    assert c.source["files"] == 3 and c.source["kind"] == "folder"


def test_random_windows_are_seeded_shifted_pairs(corpus_file):
    c = load_text(f"text:{corpus_file}", block=16)
    x1, y1 = random_windows(c.train, 8, 16, torch.Generator().manual_seed(3))
    x2, y2 = random_windows(c.train, 8, 16, torch.Generator().manual_seed(3))
    x3, _ = random_windows(c.train, 8, 16, torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == y1.shape == (8, 16)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next characters


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"abc\x00\x01\x02" * 50, "looks binary"),
        (b"caf\xe9 au lait " * 50, "is not UTF-8 text (undecodable byte 0xe9 at offset 3)"),
        (b"short text", "block 128 is longer than the train part"),
    ],
)
def test_bad_text_input_is_one_clear_error(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(HeterogradError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_text(f"text:{p}", block=128)
    code, _, err = run_cli(capsys, "train", "--model", "gpt", "--data", f"text:{p}", "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and needle.split(" (")[0] in err and "Traceback" not in err


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(HeterogradError, match="no such file or folder"):
        load_text(f"text:{tmp_path / 'nope.txt'}", block=8)
    with pytest.raises(HeterogradError, match=r"holds no \.md, \.py, \.txt files"):
        load_text(f"text:{tmp_path}", block=8)
    with pytest.raises(HeterogradError, match="positive number of MiB"):
        load_text("pystdlib:zero", block=8)


def test_pystdlib_records_its_hash_and_python_version():
    a = load_text("pystdlib:0.05", block=64)
    b = load_text("pystdlib:0.05", block=64)
    assert a.source["sha256"] == b.source["sha256"] and torch.equal(a.train, b.train)
    assert a.source["python"].count(".") == 2 and a.source["bytes"] <= 0.05 * 2**20
    assert a.source["bytes"] > 0.05 * 2**20 - 8  # cut at the size (to a whole character)
    assert "def " in a.decode(a.train[:20000])


# ------------------------------------------------------------------------------------------------- the model and loop
def test_options_that_do_not_fit_text_are_errors(corpus_file):
    with pytest.raises(HeterogradError, match="pass --model gpt"):
        TrainConfig(data=f"text:{corpus_file}", rule="kp").validate()
    with pytest.raises(HeterogradError, match="pass --model gpt"):
        TrainConfig(data=f"text:{corpus_file}", model="lenet5").validate()
    with pytest.raises(HeterogradError, match="needs text"):
        TrainConfig(data="digits", model="gpt").validate()
    with pytest.raises(HeterogradError, match="has no option depth"):
        ModuleTrainer(text_config(corpus_file, model_options={"depth": 2}))


def test_output_width_must_equal_the_vocabulary(tmp_path, corpus_file):
    f = tmp_path / "wide.py"
    f.write_text(
        "from heterograd.models import GPT, GPTConfig\n"
        "def build(in_shape, num_classes):\n"
        "    return GPT(GPTConfig(vocab=num_classes + 3, block=in_shape[0], layers=1, heads=2, dim=16))\n",
        encoding="utf-8",
    )
    cfg = text_config(corpus_file, model=f"{f}:build", model_options={"block": 32})
    vocab = load_text(cfg.data, block=32).vocab_size
    with pytest.raises(HeterogradError, match=f"vocabulary size {vocab}, but it gives output width {vocab + 3}"):
        ModuleTrainer(cfg)


def test_train_gpt_writes_the_run_folder_and_sample_prints_text(tmp_path, capsys, corpus_file):
    out = tmp_path / "run"
    argv = ["train", "--model", "gpt", "--data", f"text:{corpus_file}", "--rule", "kp", "--model-options",
            "layers=1,heads=2,dim=32,block=32", "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "16",
            "--epochs", "2", "--n-train", "160", "--n-test", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "bits per character: validation" in stdout
    for name in (
        "config.json",
        "metrics.csv",
        "summary.json",
        "vocab.json",
        "samples.txt",
        "checkpoint.pt",
        "loss.png",
    ):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_source"]["sha256"] and load_config_file(out / "config.json")["model"] == "gpt"
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 20 and math.isfinite(s["val_bpc"]) and s["val_perplexity"] == pytest.approx(2 ** s["val_bpc"])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_bpc", "val_perplexity", "phi/blocks.0.attn.qkv", "align/head"} <= set(header)
    assert "temperature 0.8" in (out / "samples.txt").read_text()
    code, text1, _ = run_cli(capsys, "sample", str(out), "--prompt", "def ", "--chars", "60", "--seed", "1")
    code2, text2, _ = run_cli(capsys, "sample", str(out), "--prompt", "def ", "--chars", "60", "--seed", "1")
    assert code == code2 == 0 and text1 == text2 and text1.startswith("def ") and len(text1.rstrip("\n")) == 64
    assert sample_text(out, "def ", 60, seed=2) != text1.rstrip("\n")
    code, _, err = run_cli(capsys, "sample", str(out), "--prompt", "déf")
    assert code == 2 and "'é'" in err and "vocabulary" in err
    code, _, err = run_cli(capsys, "sample", str(tmp_path), "--prompt", "x")
    assert code == 2 and "no vocab.json" in err


def unigram_bits(path) -> float:
    c = load_text(f"text:{path}", block=32)
    counts = Counter(c.train.tolist())
    n = sum(counts.values())
    p = {k: v / n for k, v in counts.items()}
    return -sum(math.log2(p.get(int(t), 1e-9)) for t in c.val.tolist()) / c.val.numel()


@pytest.mark.parametrize("rule", ["kp", "dfa"])
def test_gpt_learns_context_beyond_character_frequencies(corpus_file, rule):
    """A model that learns only how often each character occurs reaches the unigram entropy; using context beats it."""
    res = ModuleTrainer(text_config(corpus_file, rule=rule, epochs=6, n_test=None, probes=False)).fit(
        None, progress=False
    )
    s = res.summary
    assert not s["diverged"] and s["val_bpc"] < unigram_bits(corpus_file) - 0.3, (
        s["val_bpc"],
        unigram_bits(corpus_file),
    )


def test_interrupted_text_run_resumes_to_the_same_numbers(tmp_path, corpus_file, monkeypatch):
    cfg = text_config(corpus_file, checkpoint_every=5, probes=False)
    ref = ModuleTrainer(cfg).fit(None, progress=False)
    tr = ModuleTrainer(cfg)

    def stop() -> bool:  # as SIGTERM would, mid-epoch (10 steps per epoch)
        if tr.step_count == 13:
            tr._stop_signal = signal.SIGTERM
        return tr._stop_signal is not None

    monkeypatch.setattr(tr, "stop_requested", stop)
    with pytest.raises(TrainingInterrupted):
        tr.fit(tmp_path / "cut", progress=False, handle_signals=False)
    res = ModuleTrainer.resume(tmp_path / "cut").fit(tmp_path / "cut", progress=False)
    assert res.summary["val_bpc"] == ref.summary["val_bpc"]
    assert [r["train_loss"] for r in res.rows] == [r["train_loss"] for r in ref.rows]


def test_dfa_feedback_of_a_sequence_layer_is_per_position():
    m = GPT(GPTConfig(vocab=11, block=8, layers=1, heads=2, dim=16), seed=0)
    convert(m, "dfa", seed=0, example_input=torch.zeros(2, 8, dtype=torch.long))
    assert m.head.feedback.shape == (11, 16) and m.blocks[0].fc.feedback.shape == (11, 16)
    assert m.blocks[0].out.feedback.shape == (11, 64)
    x = torch.randint(0, 11, (3, 8))
    # the error at the last position only: under per-position DFA no earlier position of the MLP hears it
    seen = {}
    m.blocks[0].fc.register_full_backward_hook(lambda mod, gi, go: seen.__setitem__("v", gi[0]))
    out = m(x)
    out[:, -1].sum().backward()
    v = seen["v"]
    assert v[:, :-1].abs().max() == 0 and v[:, -1].abs().max() > 0


# ------------------------------------------------------------------------------------------------- the experiment
def test_language_judge_can_fail_and_counts_divergence():
    from heterograd.experiments.language import judge, select_lr

    good = {"bp": [2.0, 2.0], "kp": [2.09, 2.09], "hsp": [2.1, 2.1], "dfa": [2.5, 2.5], "fa": [2.6, 2.6]}
    assert judge(good)[0]
    assert not judge({**good, "hsp": [2.11, 2.11]})[0]  # 5.5 % above bp
    assert not judge({**good, "dfa": [2.05, 2.05]})[0]  # dfa better than kp
    assert not judge({**good, "kp": [2.0, math.nan]})[0]  # a diverged kp run counts against kp
    assert not judge({**good, "bp": [math.nan, 2.0]})[0]  # no reference, no claim
    assert not judge({**good, "fa": [math.nan, 2.6]})[0]  # a diverged comparator is never beaten
    assert select_lr({1e-3: 2.5, 3e-3: math.nan, 3e-4: 2.7}) == 1e-3
    assert select_lr({1e-3: math.nan, 3e-3: math.nan}) == 1e-3


def test_quick_language_repro_runs_with_an_equal_budget(tmp_path):
    from heterograd.experiments import run_experiment
    from heterograd.experiments.language import QUICK, RULES

    s = run_experiment("language", tmp_path, quick=True)
    assert "error" not in s, s.get("traceback")
    assert isinstance(s["holds"], bool) and len(s["figures"]) == 2
    for fig in s["figures"]:
        assert (tmp_path / "language" / fig).read_bytes()[:4] == b"\x89PNG"
    rules = s["measured"]["rules"]
    assert set(rules) == set(RULES)
    for v in rules.values():
        assert v["lr"] in QUICK.lrs and len(v["tune_val_bpc"]) == len(QUICK.lrs) and v["runs"] == QUICK.final_seeds
        assert min(x for x in v["tune_val_bpc"].values() if x is not None) == pytest.approx(
            v["tune_val_bpc"][f"{v['lr']:g}"]
        )
    report = (tmp_path / "language" / "language.md").read_text()
    assert "Launay" in report and "autograd's exact derivative" in report


def test_quick_config_is_the_full_recipe_at_a_smaller_size():
    from heterograd.experiments.language import FULL, QUICK, config_of

    full, quick = (config_of("hsp", 1e-3, 0, sc.final_steps, sc, "pystdlib") for sc in (FULL, QUICK))
    same = {k for k, v in dataclasses.asdict(full).items() if dataclasses.asdict(quick)[k] == v}
    assert {"optimizer", "schedule", "feedback_gain", "model", "rule"} <= same
    assert full.feedback_gain == 0.5 and full.epochs * FULL.steps_per_eval == FULL.final_steps


def test_a_finished_run_folder_is_read_back_not_retrained(tmp_path, corpus_file, monkeypatch):
    """`repro language` reruns read finished runs back: the recorded config (loss 'ce' filled in) matches."""
    from heterograd.experiments.language import _run_one

    cfg = text_config(corpus_file, epochs=1, probes=False)
    first = _run_one((cfg, str(tmp_path / "run"), False))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ModuleTrainer, "fit", refuse)
    again = _run_one((text_config(corpus_file, epochs=1, probes=False), str(tmp_path / "run"), False))
    assert again["summary"]["val_bpc"] == first["summary"]["val_bpc"]
    with pytest.raises(AssertionError, match="trained again"):  # another config is trained, not read back
        _run_one((text_config(corpus_file, epochs=1, probes=False, lr=1e-3), str(tmp_path / "run"), False))
