"""The training loop for converted ``torch.nn`` models: `ModuleTrainer` (``heterograd train --model``).

It runs the same loop as the circuit `Trainer` (epochs, logged rows with probes on
a fixed probe batch, test evaluation each epoch, divergence handling, checkpoints with exact resume,
SIGINT/SIGTERM, TensorBoard, the same run folder) on a model of `heterograd.models` or a user's
factory, converted by `heterograd.nn.convert` so that every plastic layer learns by the chosen rule.
The update is applied by a ``torch.optim`` optimiser (``--optimizer``), optionally under a cosine learning-rate
schedule, on augmented image batches (random crop with zero padding and horizontal flip, seeded; on an
``imagefolder:`` dataset random resized crop and flip).

``--model FILE.py:FACTORY`` imports ``FILE.py`` (this executes its code, as ``python FILE.py`` would) and calls
``FACTORY(in_shape, num_classes, **model_options)``, which must return an ``nn.Module`` mapping
``(B, *in_shape)`` to ``(B, num_classes)``. The global torch RNG is seeded with ``--seed`` for the call (and
restored afterwards), so a factory that draws its weights from it is reproducible.

Random draws of a run: the data order (``generator``) and the augmentation (``augment_generator``) come from
seeded generators; the model's own draws (``nn.Dropout``, any ``torch.rand`` in its forward) come from torch's
global RNG, which each training step seeds with a number drawn from ``model_generator`` (and restores
afterwards). All three are seeded by ``--seed`` and saved in checkpoints, so a model with dropout reruns bit for
bit and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SEQUENCE_DATA, TrainConfig, without_ignored_options
from .data import Augment, Dataset, load_dataset
from .data.imagefolder import IMAGEFOLDER_PREFIX, ResizedCropFlip
from .data.sequences import IGNORE, sorting_task
from .data.text import TextCorpus, is_text_data, load_text, random_windows, vocab_record, windows
from .errors import HeterogradError
from .models import GPT, GPTConfig, make_model
from .models.transformer import generate
from .nn import convert, plastic_layers, probe
from .results import atomic_write_text, write_json
from .rules import RULES, Rule
from .runtime import DTYPES, key_values
from .train import RunResult, Trainer, _first_n, record_dataset_name

#: ``--optimizer`` -> ``(torch.optim class, options it takes, defaults set by heterograd)``.
TORCH_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], tuple[str, ...], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, (), {}),
    "momentum": (torch.optim.SGD, ("momentum", "dampening", "nesterov"), {"momentum": 0.9}),
    "rmsprop": (torch.optim.RMSprop, ("alpha", "eps", "momentum", "centered"), {}),
    "adam": (torch.optim.Adam, ("betas", "eps", "amsgrad"), {}),
    "adamw": (torch.optim.AdamW, ("betas", "eps", "weight_decay", "amsgrad"), {}),
}


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, options: dict[str, Any]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser of an ``--optimizer`` motif name with its options.

    The rule's weight decay ``λ`` is already inside each ``.grad`` (``-Δ/η``), so the optimiser adds none of its
    own, except ``adamw``'s decoupled ``weight_decay`` (``--optimizer-weight-decay``, default 0.01 as torch).
    """
    if name not in TORCH_OPTIMIZERS:
        from .errors import unknown_choice

        raise unknown_choice("optimizer", name, TORCH_OPTIMIZERS)
    cls, allowed, defaults = TORCH_OPTIMIZERS[name]
    bad = sorted(set(options) - set(allowed))
    if bad:
        takes = ", ".join(allowed) or "no options"
        raise HeterogradError(f"optimizer {name!r} has no option {', '.join(bad)}; it takes {takes}")
    kwargs = {**defaults, **options}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    try:
        return cls(params, lr=lr, **kwargs)
    except (ValueError, TypeError) as exc:
        raise HeterogradError(f"optimizer {name!r}: {exc}; fix the option") from None


def cosine_lr(lr: float, step: int, total: int) -> float:
    """``lr · (1 + cos(π · step / total)) / 2``: ``lr`` at step 0, 0 after the last step."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def parse_model_options(text: str | None) -> dict[str, Any]:
    """``"activation=tanh,hidden=256:256,shortcut=B"`` -> ``{"activation": "tanh", "hidden": [256, 256], ...}``.

    Values are integers, numbers, ``true``/``false``, ``:``-separated lists of those, or names.
    """

    def value(v: str) -> Any:
        v = v.strip()
        if ":" in v:
            return [value(x) for x in v.split(":")]
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    return {k: value(v) for k, v in key_values(text, "--model-options", "activation=tanh")}


def load_factory(spec: str) -> Any:
    """The function ``FACTORY`` of ``FILE.py:FACTORY``; imports (executes) ``FILE.py``."""
    file, _, name = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise HeterogradError(f"--model {spec}: no file {file}; pass FILE.py:FACTORY with an existing file")
    mod_name = f"heterograd_user_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise HeterogradError(f"--model {spec}: cannot import {file} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise HeterogradError(f"--model {spec}: importing {file} failed ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise HeterogradError(f"--model {spec}: {file} defines no function {name!r}; name the factory after ':'")
    return factory


@dataclass
class SequenceData:
    """Token sequences (``sorting``): inputs ``(N, T)`` int64, next-token targets ``(N, T)`` (-100: no loss)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    def to(self, device: torch.device, dtype: torch.dtype) -> SequenceData:
        """On ``device``; tokens stay integers (``dtype`` applies to the model only)."""
        return dataclasses.replace(
            self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        )


@dataclass
class TextData:
    """A character-level corpus (``text:PATH``, ``pystdlib``) cut for windows of ``block`` characters.

    ``x_train``, ``y_train`` ``(N, block)``: the training part's non-overlapping windows and their targets (the
    probe batch, the data fingerprint of checkpoints and the epoch length come from them; training batches are
    random windows, `heterograd.data.text.random_windows`). ``x_val``/``y_val`` and ``x_test``/``y_test``:
    the validation and test parts' windows (``--n-test`` keeps the first N of each).
    """

    name: str
    corpus: TextCorpus
    block: int
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    def to(self, device: torch.device, dtype: torch.dtype) -> TextData:
        """On ``device``; tokens stay integers (``dtype`` applies to the model only)."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        corpus = dataclasses.replace(self.corpus, train=self.corpus.train.to(device))
        return dataclasses.replace(self, corpus=corpus, **moved)


#: ``--model gpt``'s sizes unless ``--model-options`` says otherwise: 4 blocks of 4 heads, width 128, 128 characters.
GPT_DEFAULTS: dict[str, int] = {"block": 128, "layers": 4, "heads": 4, "dim": 128}


def text_block(c: TrainConfig) -> int:
    """Characters per window of a text run: the model option ``block`` (default `GPT_DEFAULTS`)."""
    block = c.model_options.get("block", GPT_DEFAULTS["block"])
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise HeterogradError(f"--model-options block must be a positive integer, got {block!r}; e.g. block=128")
    return block


def load_text_data(c: TrainConfig) -> TextData:
    """The corpus of ``c.data`` cut into windows of `text_block` characters."""
    block = text_block(c)
    corpus = load_text(c.data, block=block)
    x, y = windows(corpus.train, block)
    xv, yv = windows(corpus.val, block, c.n_test)
    xt, yt = windows(corpus.test, block, c.n_test)
    return TextData(c.data, corpus, block, x, y, xv, yv, xt, yt, corpus.vocab_size)


#: the sorting task's size: digits per sequence, vocabulary, train / test sequences.
SORTING = {"length": 6, "vocab": 8, "n_train": 8192, "n_test": 1024}


def load_module_data(c: TrainConfig, dataset: Dataset | None) -> Dataset | SequenceData | TextData:
    """The run's data in the layout its model reads: images ``(N, C, H, W)`` where the data hold images."""
    if is_text_data(c.data):
        if dataset is not None:
            raise HeterogradError(f"--data {c.data} is read from its text; do not pass a dataset")
        return load_text_data(c)
    if c.data in SEQUENCE_DATA:
        if dataset is not None:
            raise HeterogradError("--data sorting is generated; do not pass a dataset")
        ntr, nte = c.n_train or SORTING["n_train"], c.n_test or SORTING["n_test"]
        x, y = sorting_task(ntr + nte, SORTING["length"], SORTING["vocab"], seed=c.seed)
        return SequenceData(c.data, x[:ntr], y[:ntr], x[ntr:], y[ntr:], SORTING["vocab"])
    if dataset is None:
        ds = load_dataset(c.data, seed=c.seed, n_train=c.n_train, n_test=c.n_test)
    elif not isinstance(dataset, Dataset):
        raise HeterogradError(f"dataset must be a heterograd Dataset, got {type(dataset).__name__}; use load_dataset")
    else:
        ds = _first_n(dataset, c.n_train, c.n_test)
        record_dataset_name(c, dataset)
    if ds.n_classes is None:
        raise HeterogradError(f"--model trains classifiers; {c.data!r} is a regression dataset")
    if ds.image_shape is not None and c.model != "mlp":
        ds = ds.images()
    elif c.augment:
        raise HeterogradError(f"--augment needs images in the (N, C, H, W) layout; {c.data!r} with --model {c.model}")
    return ds


def build_model(c: TrainConfig, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The unconverted model of ``c.model`` (zoo name, ``transformer`` or ``FILE.py:FACTORY``), seeded by ``c.seed``."""
    assert c.model is not None
    opts = dict(c.model_options)
    if c.model in ("transformer", "gpt"):
        return _transformer(c, opts, in_shape, num_classes)
    if is_text_data(c.data):
        opts.pop("block", None)  # the window length: in_shape[0]
    if c.model == "mlp":
        opts = {"hidden": tuple(c.hidden), "activation": c.activation, **opts}
    if ":" not in c.model:
        return make_model(c.model, in_shape, num_classes, seed=c.seed, **opts)
    factory = load_factory(c.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        try:
            model = factory(in_shape, num_classes, **opts)
        except HeterogradError:
            raise
        except Exception as exc:
            raise HeterogradError(f"--model {c.model}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise HeterogradError(f"--model {c.model}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def _transformer(c: TrainConfig, opts: dict[str, Any], in_shape: tuple[int, ...], vocab: int) -> nn.Module:
    """The GPT of ``--model transformer`` / ``gpt`` with ``--model-options`` checked: names, types, ``dim % heads``."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab", "block"}
    if c.model == "gpt":  # block is the window length, read with the data (text_block)
        fields.add("block")
        opts = {**GPT_DEFAULTS, **opts, "block": in_shape[0]}
    bad = sorted(set(opts) - fields)
    if bad:
        raise HeterogradError(f"model {c.model!r} has no option {', '.join(bad)}; it takes {', '.join(sorted(fields))}")
    opts.pop("block", None)
    defaults = GPTConfig(vocab=vocab, block=in_shape[0])
    for k, v in opts.items():
        default = getattr(defaults, k)
        number = not isinstance(v, bool) and isinstance(v, int | float)
        if isinstance(default, int) and not isinstance(default, bool):
            ok, what = number and isinstance(v, int) and v >= 1, "an integer >= 1"
        elif isinstance(default, float):
            ok, what = number, "a number"
        else:
            ok, what = isinstance(v, type(default)), type(default).__name__
        if not ok:
            raise HeterogradError(
                f"--model-options {k}={v!r}: the {c.model}'s {k} must be {what}; e.g. --model-options {k}={default}"
            )
    cfg = GPTConfig(vocab=vocab, block=in_shape[0], **opts)
    if cfg.dim % cfg.heads:
        raise HeterogradError(
            f"--model-options dim={cfg.dim},heads={cfg.heads}: dim must be a multiple of heads (each head gets "
            f"dim/heads features); e.g. dim={cfg.heads * max(1, round(cfg.dim / cfg.heads))},heads={cfg.heads}"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            return GPT(cfg)
    except (TypeError, ValueError) as exc:
        raise HeterogradError(f"--model {c.model}: {exc}; fix --model-options") from None


def convert_for(c: TrainConfig, model: nn.Module, example: Tensor, **options: Any) -> nn.Module:
    """Convert ``model`` in place for the rule of ``c`` (``example``: a batch of inputs, which ``dfa`` needs).

    ``options``: more `heterograd.convert` keywords and rule options than the config carries (e.g.
    ``feedback_scale``, ``spread``), passed as they are.
    """
    return convert(
        model,
        c.rule,
        feedback_init=None
        if RULES[c.rule].feedback not in ("plastic", "frozen") and c.feedback_init == "random"
        else c.feedback_init,
        seed=c.seed,
        example_input=example if RULES[c.rule].feedback == "direct" else None,
        norm_feedback=c.norm_feedback,
        **rule_options(c),
        **options,
    )


def check_vocab_width(model: nn.Module, example: Tensor, vocab: int, name: str | None) -> None:
    """A language model's output ``(n, T, V)`` must have ``V`` equal to the vocabulary size, else a clear error."""
    with torch.no_grad():
        out = model(example)
    width = out.shape[-1] if isinstance(out, Tensor) and out.dim() == 3 else None
    if width != vocab:
        got = f"output width {width}" if width is not None else f"output of shape {getattr(out, 'shape', type(out))}"
        raise HeterogradError(
            f"--model {name}: a language model maps (n, T) tokens to (n, T, V) logits with V = the vocabulary size "
            f"{vocab}, but it gives {got}; build its last layer with num_classes outputs"
        )


def bits_per_char(loss_nats: float) -> float:
    """Cross-entropy in bits per character from nats per character (``loss / ln 2``)."""
    return loss_nats / math.log(2.0)


def _exp(x: float) -> float:
    return math.exp(x) if math.isfinite(x) and x < 700 else math.inf if math.isfinite(x) else math.nan


#: windows of the probe batch of a text run: the first ``min(probe_size, 32)`` training windows.
TEXT_PROBE_WINDOWS = 32
#: what ``samples.txt`` holds: one sample per temperature, from the validation part's first characters.
SAMPLE_TEMPERATURES: tuple[float, ...] = (1.0, 0.8)
SAMPLE_CHARS = 300


def write_samples(model: nn.Module, corpus: TextCorpus, block: int, path: Path, *, seed: int) -> None:
    """Write ``samples.txt``: `SAMPLE_CHARS` characters per temperature of `SAMPLE_TEMPERATURES`,
    each continuing the first ``min(32, block)`` characters of the validation part, seeded by ``seed``."""
    prompt = corpus.val[: min(32, block)].to(next(model.parameters()).device)
    parts = []
    for t in SAMPLE_TEMPERATURES:
        g = torch.Generator().manual_seed(seed)
        ids = generate(model, prompt, SAMPLE_CHARS, block=block, temperature=t, generator=g)
        parts.append(
            f"--- temperature {t}, seed {seed}, prompt: the first {prompt.numel()} characters of the validation "
            f"part ---\n{corpus.decode(ids)}\n"
        )
    atomic_write_text(path, "\n".join(parts))


def load_language_model(run_dir: str | Path) -> tuple[nn.Module, TextCorpus, int, TrainConfig]:
    """The trained language model of a text run folder (``checkpoint.pt``, ``vocab.json``), in eval mode.

    Returns ``(model, corpus, block, config)``; ``corpus`` carries only the vocabulary (empty parts), enough to
    encode a prompt and decode samples. The corpus itself is not read again.
    """
    from .checkpoint import checkpoint_path, load_checkpoint

    run = Path(run_dir)
    if not (run / "vocab.json").is_file():
        raise HeterogradError(
            f"{run} holds no vocab.json: it is not the folder of a language-model run (heterograd train --model gpt "
            "--data text:PATH ...)"
        )
    if not checkpoint_path(run).is_file():
        raise HeterogradError(f"{run} holds no checkpoint.pt (the run did not finish?); finish it with --resume")
    ck = load_checkpoint(run)
    cfg = TrainConfig(**without_ignored_options(dict(ck["config"]))).validate()
    cfg.device = "cpu"
    tokens = json.loads((run / "vocab.json").read_text(encoding="utf-8"))["tokens"]
    empty = torch.zeros(0, dtype=torch.long)
    corpus = TextCorpus(cfg.data, tuple(tokens), empty, empty, empty)
    block = text_block(cfg)
    model = build_model(cfg, (block,), len(tokens))
    convert_for(cfg, model, torch.zeros(1, block, dtype=torch.long))
    try:
        model.load_state_dict(ck["circuit"])
    except (RuntimeError, KeyError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise HeterogradError(f"{run}/checkpoint.pt does not fit its config ({msg}); retrain the run") from None
    return model.eval(), corpus, block, cfg


def sample_text(
    run_dir: str | Path, prompt: str = "\n", chars: int = SAMPLE_CHARS, *, temperature: float = 1.0, seed: int = 0
) -> str:
    """``prompt`` and ``chars`` characters sampled from the language model of ``run_dir`` (seeded by ``seed``)."""
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1:
        raise HeterogradError(f"--chars must be a positive integer, got {chars!r}; e.g. --chars 300")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise HeterogradError(f"--temperature must be a positive number, got {temperature!r}; e.g. 0.8")
    if not prompt:
        raise HeterogradError('--prompt is empty; pass at least one character, e.g. --prompt "def "')
    model, corpus, block, _ = load_language_model(run_dir)
    ids = corpus.encode(prompt)
    out = generate(model, ids, chars, block=block, temperature=float(temperature),
                   generator=torch.Generator().manual_seed(int(seed)))  # fmt: skip
    return prompt + corpus.decode(out)


def rule_options(c: TrainConfig) -> dict[str, Any]:
    """The rule's hyperparameters from a validated config (``None``: not set, or not a hyperparameter of the rule).

    `TrainConfig.validate` has already refused an option the rule would ignore and filled in the defaults
    of those it takes.
    """
    opts: dict[str, Any] = {}
    for name in ("weight_decay", "feedback_gain"):
        if getattr(c, name) is not None:
            opts[name] = getattr(c, name)
    for name in ("theta_w", "theta_b"):
        if getattr(c, name) is not None:
            opts[name] = tuple(getattr(c, name))
    return opts


class ModuleTrainer(Trainer):
    """Runs a `TrainConfig` with ``model`` set: a converted ``nn.Module`` trained by ``torch.optim``.

    The loop, logging, run folder, checkpoints and resume are `Trainer`'s; this class
    supplies the step, probes (`heterograd.nn.probe` per plastic layer: ``phi/<layer>``, ``align/<layer>``,
    ...), evaluation, divergence check and the model's part of a checkpoint. ``self.model`` (also
    ``self.circuit``, the name the shared loop uses) is the converted model.

    With ``config.amp = "bf16"`` the forward (and the test evaluation) runs under ``torch.autocast`` to
    bfloat16: the plastic layers compute in bfloat16, their weights, ``B`` and the optimiser state stay float32.

    Args:
        config: the run's configuration (``config.model`` must be set).
        dataset: optionally a preloaded `Dataset`.
    """

    #: whether this trainer runs one rank of a data-parallel run (``--sync-batchnorm`` applies only then).
    data_parallel: bool = False

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        self.config = config.validate()
        c = self.config
        if c.model is None:
            raise HeterogradError("ModuleTrainer needs config.model (e.g. 'lenet5'); use Trainer for circuits")
        if c.sync_batchnorm and not self.data_parallel:
            raise HeterogradError(
                "--sync-batchnorm synchronises BatchNorm statistics across the ranks of a data-parallel run; add "
                "--distributed (under torchrun) or drop --sync-batchnorm"
            )
        self.dtype = DTYPES[c.dtype]
        self.device = torch.device(c.device)
        self.data: Any = load_module_data(c, dataset).to(device=self.device, dtype=self.dtype)
        if c.loss is None:
            c.loss = "ce"
        self.sequence = isinstance(self.data, SequenceData | TextData)
        self.text = isinstance(self.data, TextData)
        in_shape = tuple(self.data.x_train.shape[1:])
        model = self.build_model(in_shape, int(self.data.n_classes))
        model = model.to(device=self.device, dtype=self.dtype)
        example = self.data.x_train[: min(8, self.data.x_train.shape[0])]
        if self.text:
            check_vocab_width(model, example[:1], int(self.data.n_classes), c.model)
        self.convert_model(model, example)
        self.model = self.circuit = model  # type: ignore[assignment]
        self.model_generator = torch.Generator().manual_seed(c.seed + 104729)  # the model's own draws (dropout)
        self._preflight(example)
        self.model.train()
        layers = [m for _, m in plastic_layers(model)]
        self.rule: Rule = layers[0].plasticity.rule if layers else RULES[c.rule]()  # type: ignore[union-attr]
        self.hardware = None
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise HeterogradError(f"--model {c.model} has no trainable parameters")
        self.optimizer = make_optimizer(c.optimizer, params, c.lr, dict(c.optimizer_options))
        # crop padding 4 for 32x32 images (the usual CIFAR recipe), 2 for smaller ones (28x28 Fashion-MNIST)
        pad = 4 if self.data.x_train.shape[-1] >= 32 else 2
        self.augment: Any = None
        if c.augment:  # an image folder: ImageNet's random resized crop + flip; else crop with padding + flip
            self.augment = ResizedCropFlip() if c.data.lower().startswith(IMAGEFOLDER_PREFIX) else Augment(padding=pad)
        self.augment_generator = torch.Generator().manual_seed(c.seed + 7919)
        self.text_outputs = True
        self._init_position()
        if self.text:  # an epoch is n_train random windows (default: as many as the training part holds)
            windows_per_epoch = c.n_train or self.data.x_train.shape[0]
            self.steps_per_epoch = max(1, windows_per_epoch // c.batch_size)
            self.log_every = c.log_every or max(1, self.steps_per_epoch // 4)
            k = min(c.probe_size, TEXT_PROBE_WINDOWS)
            self.probe_x, self.probe_y = self.data.x_train[:k], self.data.y_train[:k]

    # ..................................................................... model (hooks for experiments)
    def build_model(self, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The unconverted model of the config (`build_model`); a subclass may change it, e.g. its init."""
        return build_model(self.config, in_shape, num_classes)

    def convert_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        """Convert ``model`` in place for the config's rule (`convert_for`; ``example`` ``(n, *in_shape)``); a
        subclass may pass `heterograd.convert` options the config does not carry."""
        return convert_for(self.config, model, example)

    # ..................................................................... steps
    def loss_of(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy: ``out`` ``(n, K)``, labels ``(n,)``; or ``(n, T, V)``, ``(n, T)`` (-100 ignored).

        Half-precision logits (``--amp``) are taken in float32, as autocast does for losses.
        """
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()
        if out.dim() == 3:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        return F.cross_entropy(out, y)

    def total_steps(self) -> int:
        """Steps of the whole run (the cosine schedule reaches 0 there)."""
        return self.config.epochs * self.steps_per_epoch

    def _preflight(self, x: Tensor) -> None:
        """Before anything is written: the model runs on a few training inputs, its output width fits the data, and
        one forward + backward raises the `heterograd.nn.layers.GradientGuard` error of a plastic weight
        used outside its module. Nothing is changed: buffers (BatchNorm statistics), the global RNG, the layers'
        generators and ``.grad`` are restored."""
        c, model = self.config, self.model
        n_out = int(self.data.n_classes)
        what = "token vocabulary" if self.sequence else "classes"
        saved = [(b, b.detach().clone()) for b in model.buffers()]
        gens = [
            (m.plasticity.generator, m.plasticity.generator.get_state())  # type: ignore[union-attr]
            for _, m in plastic_layers(model)
            if m.plasticity.generator is not None  # type: ignore[union-attr]
        ]
        try:
            with torch.random.fork_rng(devices=[]):
                model.eval()
                try:
                    with torch.no_grad():
                        out = model(x)
                except HeterogradError:
                    raise
                except Exception as exc:  # the user's forward does not fit the data
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    raise HeterogradError(
                        f"--model {c.model}: the model's forward failed on inputs of shape {tuple(x.shape)} from "
                        f"--data {c.data} ({type(exc).__name__}: {first}); make it accept that shape"
                    ) from None
                finally:
                    model.train()
                if not isinstance(out, Tensor):
                    raise HeterogradError(
                        f"--model {c.model}: the model returned {type(out).__name__}; it must return one tensor of "
                        f"logits (batch, {n_out})"
                    )
                want = 3 if self.sequence else 2
                if out.dim() != want or out.shape[-1] != n_out:
                    shape = "(batch, positions, vocabulary)" if self.sequence else "(batch, classes)"
                    raise HeterogradError(
                        f"--model {c.model} outputs {out.shape[-1] if out.dim() else 1} logits per "
                        f"{'position' if self.sequence else 'example'} (output shape {tuple(out.shape)}) but --data "
                        f"{c.data} has {n_out} {what}; its output must be {shape} with {n_out} there"
                    )
                self.loss_of(model(x), self.data.y_train[: x.shape[0]]).backward()  # GradientGuard checks here
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)
            for g, state in gens:
                g.set_state(state)

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One step: (augment,) forward, ``loss.backward()`` (the rule's t' sweep fills ``.grad``), optimiser step.

        The forward and backward run with torch's global RNG seeded from ``model_generator`` (restored after), so
        dropout draws the same masks on every rerun and after a resume.
        """
        c = self.config
        if self.augment is not None:
            x = self.augment(x, self.augment_generator)
        if c.schedule == "cosine":
            lr = cosine_lr(c.lr, self.step_count, self.total_steps())
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        step_seed = int(torch.randint(0, 2**62, (), generator=self.model_generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed)  # also seeds CUDA's generators: the model's draws on any device
            loss, value = self.batch_loss(x, y)
            loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return value

    def autocast(self) -> Any:
        """``torch.autocast`` to bfloat16 on the model's device with ``--amp bf16``, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp == "bf16")

    def batch_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss to call backward on, the batch's mean loss to report)`` of the model on a batch ``(x, y)``."""
        with self.autocast():
            loss = self.loss_of(self.model(x), y)
        return loss, loss.detach()

    def probe(self) -> dict[str, float]:
        """Per-layer probes (`heterograd.nn.probe`) on the fixed probe batch; nothing is changed."""
        return probe(self.model, self.probe_x, self.probe_y, self.loss_of, seed=self.config.seed).as_dict()

    def epoch_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Text: ``steps_per_epoch`` batches of random windows from ``self.generator``; else shuffled minibatches."""
        if not self.text:
            return super().epoch_batches()
        data, c = self.data, self.config

        def draw() -> Iterator[tuple[Tensor, Tensor]]:
            for _ in range(self.steps_per_epoch):
                yield random_windows(data.corpus.train, c.batch_size, data.block, self.generator)

        return draw()

    def epoch_metrics(self) -> dict[str, Any]:
        """Text: validation loss (nats), bits per character, perplexity and next-character accuracy; else test."""
        if not self.text:
            return super().epoch_metrics()
        loss, acc = self.evaluate(self.data.x_val, self.data.y_val)
        return {"val_loss": loss, "val_bpc": bits_per_char(loss), "val_perplexity": math.exp(loss),
                "val_accuracy": acc}  # fmt: skip

    def evaluate_test(self, chunk: int | None = None, every: int = 1) -> tuple[float, float | None]:
        """Mean test loss and accuracy (eval mode: BatchNorm uses running statistics), every ``every``-th example."""
        return self.evaluate(self.data.x_test[::every], self.data.y_test[::every], chunk)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, chunk: int | None = None) -> tuple[float, float | None]:
        """Mean loss (nats per target) and accuracy on ``x`` ``(N, ...)``, ``y`` (targets equal to -100 left out)."""
        chunk = chunk or (64 if self.text else 1000)
        self.model.eval()
        try:
            total, correct, count = 0.0, 0, 0
            for i in range(0, x.shape[0], chunk):
                with self.autocast():
                    out = self.model(x[i : i + chunk])
                out = out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
                yy = y[i : i + chunk]
                logits, labels = out.reshape(-1, out.shape[-1]), yy.reshape(-1)
                keep = labels != IGNORE
                total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum").double())
                correct += int((logits[keep].argmax(1) == labels[keep]).sum())
                count += int(keep.sum())
        finally:
            self.model.train()
        n = max(1, count)
        return total / n, correct / n

    def named_tensors(self) -> list[tuple[str, Tensor]]:
        """Every parameter of the model (weights, biases, plastic ``B``, norm affine), for the divergence check."""
        return list(self.model.named_parameters())

    def title(self) -> str:
        c = self.config
        return f"{c.model}, {c.rule} on {c.data} (seed {c.seed})"

    # ..................................................................... checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Model (weights, ``B``, BatchNorm statistics), optimiser, augmentation and rule generators, position.

        The checkpoint keeps the circuit engine's layout: ``circuit`` holds the model's ``state_dict()``,
        ``motif_state`` the optimiser's, ``rule_state`` the random generators (augmentation; ``brsf``'s redraws).
        """
        layers = plastic_layers(self.model)
        gens = {n: m.plasticity.generator.get_state() for n, m in layers if m.plasticity.generator is not None}  # type: ignore[union-attr]
        return {
            "circuit": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "motif_state": self.optimizer.state_dict(),
            "rule_state": {
                "augment_generator": self.augment_generator.get_state(),
                "model_generator": self.model_generator.get_state(),
                "rule_generators": gens,
            },
            **self._position_state(),
        }

    def load_state_dict(self, ck: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore what `state_dict` wrote (config compatibility is checked by `resume`)."""
        self._check_data(ck, source)
        try:
            self.model.load_state_dict(ck["circuit"])
            self.optimizer.load_state_dict(ck["motif_state"])
            self.augment_generator.set_state(ck["rule_state"]["augment_generator"])
            if "model_generator" in ck["rule_state"]:  # absent in checkpoints of heterograd <= 0.2.0
                self.model_generator.set_state(ck["rule_state"]["model_generator"])
            layers = dict(plastic_layers(self.model))
            for name, state in ck["rule_state"]["rule_generators"].items():
                layers[name].plasticity.generator.set_state(state)  # type: ignore[union-attr]
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise HeterogradError(f"{source} does not fit this model ({msg}); start a new run") from None
        self._load_position(ck, source)

    # ..................................................................... summary
    def layer_names(self) -> list[str]:
        """Module paths of the plastic synapse layers (the probed ones), in order."""
        return [n for n, m in plastic_layers(self.model) if m.plasticity.synapse is not None]  # type: ignore[union-attr]

    def probed_layers(self) -> list[str]:
        return [f"/{n}" for n in self.layer_names()]

    def summary_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"model": self.config.model, "layers": self.layer_names()}
        if not self.text:
            return extra
        diverged = bool(self.rows) and "diverged" in self.rows[-1]
        val = math.nan if diverged else self.evaluate(self.data.x_val, self.data.y_val)[0]
        test = math.nan if diverged else self.evaluate_test()[0]
        corpus = self.data.corpus
        return {
            **extra,
            "val_bpc": bits_per_char(val),
            "val_perplexity": _exp(val),
            "test_bpc": bits_per_char(test),
            "test_perplexity": _exp(test),
            "vocab_size": corpus.vocab_size,
            "block": self.data.block,
            "unknown_characters": dict(corpus.unknown),
        }

    def recorded_extra(self) -> dict[str, Any]:
        """Text: ``data_source`` in ``config.json`` (files, bytes, SHA-256; Python version for ``pystdlib``)."""
        return {"data_source": dict(self.data.corpus.source)} if self.text else {}

    def write_run_files(self, out: Path) -> None:
        """Text: ``vocab.json``, the tokens (``<unk>`` first) that ``heterograd sample`` decodes with."""
        if self.text:
            write_json(out / "vocab.json", vocab_record(self.data.corpus))

    def fit(self, out_dir: str | Path | None = None, **kwargs: Any) -> RunResult:
        """`Trainer.fit`; a text run then keeps its weights (``checkpoint.pt``, which ``heterograd sample``
        reads) and writes ``samples.txt`` (`SAMPLE_TEMPERATURES`, `SAMPLE_CHARS` characters each,
        seeded), unless ``self.text_outputs`` was set to ``False`` (runs that only choose a step size)."""
        result = super().fit(out_dir, **kwargs)
        if self.text and self.text_outputs and result.out_dir is not None and not result.summary["diverged"]:
            if self.checkpoint_file is None or not self.config.checkpoint_every:
                self.save_checkpoint(result.out_dir)
            write_samples(self.model, self.data.corpus, self.data.block, result.out_dir / "samples.txt",
                          seed=self.config.seed)  # fmt: skip
        return result


def make_trainer(config: TrainConfig, dataset: Dataset | None = None) -> Trainer:
    """`ModuleTrainer` when ``config.model`` is set, else the circuit `Trainer`."""
    return ModuleTrainer(config, dataset) if config.model is not None else Trainer(config, dataset)


def resume_trainer(run_dir: str | Path, dataset: Dataset | None = None, **overrides: Any) -> Trainer:
    """Rebuild the trainer of ``run_dir/checkpoint.pt`` (circuit or module engine, as the run was)."""
    from .checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    cls = ModuleTrainer if ck.get("config", {}).get("model") is not None else Trainer
    return cls.resume(run_dir, dataset, **overrides)


__all__ = [
    "GPT_DEFAULTS",
    "TORCH_OPTIMIZERS",
    "ModuleTrainer",
    "SequenceData",
    "TextData",
    "bits_per_char",
    "build_model",
    "cosine_lr",
    "load_factory",
    "load_language_model",
    "make_optimizer",
    "make_trainer",
    "parse_model_options",
    "resume_trainer",
    "sample_text",
]
