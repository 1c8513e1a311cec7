"""Configuration of a training run: `TrainConfig`, the validation of every field, config files.

Kept apart from the loop (`heterograd.train`) so that the command line, experiments and
evolution can build and check a configuration without importing the trainer. `load_config_file`
reads a TOML, YAML or JSON file with the keys of a run's ``config.json`` (``heterograd train --config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .circuits import ACTIVATIONS, FEEDBACK_INITS, TOPOLOGIES, parse_hidden
from .data.text import is_text_data
from .errors import HeterogradError, unknown_choice
from .hardware import make_device_model
from .losses import LOSSES
from .models import MODELS
from .nn import NORM_FEEDBACK
from .optim import MOTIFS
from .rules import RULES, RUN_DEFAULTS, check_rule_hyperparameters, rule_hyperparameters, run_defaults
from .runtime import DTYPES, resolve_device


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved resolved as ``config.json``).

    Defaults reproduce ``heterograd train --data digits --rule hsp``.

    ``weight_decay``, ``feedback_gain`` and ``density`` default to ``None``, "not set":
    `validate` fills in the default (``1e-4``; ``0.5`` for ``hsp``, ``1.0`` for ``poly`` and
    ``freeze``; ``1.0``) only where the rule or the topology uses it, and leaves ``None`` where it
    would be ignored, so ``config.json`` never records a value that had no effect. Setting one where
    it has no effect (``feedback_gain`` with ``fa``, ``density`` with ``layered``) is a
    `HeterogradError`. ``lr`` unset is the optimiser's default step size (`LR_DEFAULTS`:
    ``0.05`` for ``sgd`` and ``momentum``, ``1e-3`` for ``rmsprop``, ``adam`` and ``adamw``).
    """

    data: str = "digits"
    rule: str = "hsp"
    epochs: int = 20
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "tanh"
    lr: float | None = None
    batch_size: int = 32
    weight_decay: float | None = None
    feedback_gain: float | None = None
    topology: str = "layered"
    density: float | None = None
    feedback_init: str = "random"
    loss: str | None = None
    optimizer: str = "sgd"
    device: str = "cpu"
    dtype: str = "float32"
    log_every: int | None = None
    probes: bool = True
    probe_size: int = 512
    n_train: int | None = None
    n_test: int | None = None
    theta_w: list[float] | None = None
    theta_b: list[float] | None = None
    divergence_threshold: float = 1e6
    checkpoint_every: int | None = None
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    compile: bool = False
    device_model: str = "ideal"
    device_model_options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    augment: bool = False
    norm_feedback: str = "exact"
    amp: str = "none"
    sync_batchnorm: bool = False

    def validate(self) -> TrainConfig:
        """Check every field; raise `HeterogradError` naming the first problem and the fix."""
        for name in ("rule", "activation", "topology", "feedback_init", "optimizer", "dtype", "device"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise HeterogradError(f"{name} must be a name (str), got {v!r}; e.g. {name}={_EXAMPLES[name]!r}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise HeterogradError(f"data must be a dataset name, got {self.data!r}; e.g. data='digits' or 'idx:<dir>'")
        if self.rule not in RULES:
            raise unknown_choice("rule", self.rule, RULES)
        if self.activation not in ACTIVATIONS:
            raise unknown_choice("activation", self.activation, ACTIVATIONS)
        if self.topology not in TOPOLOGIES:
            raise unknown_choice("topology", self.topology, TOPOLOGIES)
        if self.feedback_init not in FEEDBACK_INITS:
            raise unknown_choice("feedback init", self.feedback_init, FEEDBACK_INITS)
        if self.loss is not None and (not isinstance(self.loss, str) or self.loss not in LOSSES):
            raise unknown_choice("loss", self.loss, LOSSES)
        if self.optimizer not in MOTIFS:
            raise unknown_choice("optimizer", self.optimizer, MOTIFS)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        self.hidden = parse_hidden(self.hidden)
        for name, lo in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("probe_size", 1)):
            _check_int(name, getattr(self, name), lo)
        if self.seed >= 2**63:
            raise HeterogradError(f"--seed must be < 2**63, got {self.seed}; pass a smaller seed")
        for name in ("log_every", "n_train", "n_test", "checkpoint_every"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, optional=True)
        if self.lr is None:  # not set: the optimiser's own default step size
            self.lr = LR_DEFAULTS.get(self.optimizer, LR_DEFAULTS["sgd"])
        for name in ("lr", "divergence_threshold"):
            _check_real(name, getattr(self, name))
        for name in ("weight_decay", "feedback_gain", "density"):
            if getattr(self, name) is not None:
                _check_real(name, getattr(self, name))
        wd, dens = self.weight_decay, self.density
        checks: list[tuple[bool, str]] = [
            (self.lr > 0, f"--lr must be a positive number, got {self.lr}; e.g. --lr 0.05"),
            (wd is None or wd >= 0, f"--weight-decay must be >= 0, got {wd}; e.g. --weight-decay 1e-4"),
            (dens is None or 0 < dens <= 1, f"--density must be in (0, 1], got {dens}; e.g. --density 0.2"),
            (
                self.divergence_threshold > 0,
                f"divergence_threshold must be > 0, got {self.divergence_threshold}; e.g. 1e6",
            ),
            (isinstance(self.probes, bool), f"probes must be True or False, got {self.probes!r}"),
            (
                isinstance(self.optimizer_options, dict) and all(isinstance(k, str) for k in self.optimizer_options),
                f"optimizer_options must be a dict of name -> value, got {self.optimizer_options!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise HeterogradError(msg)
        for name in ("theta_w", "theta_b"):
            theta = getattr(self, name)
            if theta is None:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(theta, str) or not isinstance(theta, Sequence):
                raise HeterogradError(
                    f"{flag} must be a list of numbers, got {theta!r}; e.g. {flag} 1,0,0,0,0,0,1e-4,0"
                )
            try:
                vals = [float(v) for v in theta]
            except (TypeError, ValueError):
                raise HeterogradError(
                    f"{flag} must be a list of numbers, got {theta!r}; e.g. {flag} 1,0,0,0,0,0,1e-4,0"
                ) from None
            if not all(math.isfinite(v) for v in vals):
                raise HeterogradError(f"{flag} must hold finite numbers, got {theta!r}")
            setattr(self, name, vals)
        if not isinstance(self.device_model_options, dict):
            raise HeterogradError(
                f"device_model_options must be a dict of name -> value, got {self.device_model_options!r}; "
                "e.g. {'read_noise': 0.1}"
            )
        model = make_device_model(self.device_model, self.device_model_options)  # clear error on a bad name/key
        if self.compile and not model.is_ideal:
            raise HeterogradError("--compile does not support a device model yet; drop --compile or --device-model")
        self._validate_module_engine()  # first: a converted model's own messages for circuit-only options
        self._resolve_applicable()
        self.device = resolve_device(self.device)
        return self

    def _resolve_applicable(self) -> None:
        """Reject options that would be ignored; fill in the defaults of the unset ones that apply."""
        hyper = {k: getattr(self, k) for k in ("weight_decay", "feedback_gain", "theta_w", "theta_b")}
        check_rule_hyperparameters(self.rule, **hyper)
        for name, default in run_defaults(self.rule, hyper).items():
            setattr(self, name, default)
        if self.topology in MASKED_TOPOLOGIES:
            if self.density is None:
                self.density = 1.0
        elif self.density is not None:
            raise HeterogradError(
                f"--density sets the feedback mask of the sparse and amorphous topologies; topology "
                f"{self.topology!r} has no mask and would ignore it; drop --density or use --topology sparse"
            )
        if self.feedback_init != "random" and self.topology in ("direct", "amorphous") and len(self.hidden) >= 2:
            raise HeterogradError(
                f"--feedback-init {self.feedback_init} sets B = ±Wᵀ, which exists only for feedback edges between "
                f"adjacent layers; topology {self.topology!r} with {len(self.hidden)} hidden layers has edges that "
                "skip layers, which would start random; use --feedback-init random or --topology layered/sparse"
            )

    def _validate_module_engine(self) -> None:
        """Options of the module engine (``--model``) and the circuit options it cannot honour."""
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise unknown_choice("schedule", self.schedule, SCHEDULES)
        if not isinstance(self.augment, bool):
            raise HeterogradError(f"augment must be True or False, got {self.augment!r}")
        if not isinstance(self.norm_feedback, str) or self.norm_feedback not in NORM_FEEDBACK:
            raise unknown_choice("norm feedback", self.norm_feedback, NORM_FEEDBACK)
        if not isinstance(self.sync_batchnorm, bool):
            raise HeterogradError(f"sync_batchnorm must be True or False, got {self.sync_batchnorm!r}")
        _check_amp(self.amp, self.dtype, self.device)
        if not isinstance(self.model_options, dict) or not all(isinstance(k, str) for k in self.model_options):
            raise HeterogradError(f"model_options must be a dict of name -> value, got {self.model_options!r}")
        if self.model is None:
            used = [
                flag
                for flag, on in (
                    ("--schedule", self.schedule != "constant"),
                    ("--augment", self.augment),
                    ("--model-options", bool(self.model_options)),
                    ("--norm-feedback", self.norm_feedback != "exact"),
                    ("--amp", self.amp != "none"),
                    ("--sync-batchnorm", self.sync_batchnorm),
                )
                if on
            ]
            if used:
                raise HeterogradError(
                    f"{', '.join(used)} {'applies' if len(used) == 1 else 'apply'} only to a converted model; pass "
                    "--model (e.g. --model lenet5) "
                    "or drop them"
                )
            if self.data in SEQUENCE_DATA:
                raise HeterogradError(f"--data {self.data} is a sequence task for --model transformer; pass it")
            if is_text_data(self.data):
                raise HeterogradError(f"--data {self.data} is text for a language model; pass --model gpt")
            return
        if not isinstance(self.model, str) or not self.model.strip():
            raise HeterogradError(f"model must be a name or FILE.py:FACTORY, got {self.model!r}; e.g. model='lenet5'")
        if ":" in self.model:
            file, _, factory = self.model.rpartition(":")
            if not file.endswith(".py") or not factory.isidentifier():
                raise HeterogradError(
                    f"--model {self.model}: a user model is FILE.py:FACTORY (a Python file and a function in it), "
                    "e.g. --model mynet.py:build"
                )
        elif self.model not in MODULE_MODELS:
            raise unknown_choice("model", self.model, MODULE_MODELS)
        if self.model == "transformer" and self.data not in SEQUENCE_DATA:
            raise HeterogradError(
                f"--model transformer needs a sequence task, got --data {self.data}; pass --data sorting (for text: "
                "--model gpt)"
            )
        if self.data in SEQUENCE_DATA and self.model in MODULE_MODELS and self.model != "transformer":
            raise HeterogradError(f"--data {self.data} is a sequence task; pass --model transformer")
        text = is_text_data(self.data)
        if self.model == "gpt" and not text:
            raise HeterogradError(
                f"--model gpt is a character-level language model and needs text, got --data {self.data}; pass "
                "--data text:PATH or --data pystdlib"
            )
        if text and self.model in MODULE_MODELS and self.model != "gpt":
            raise HeterogradError(f"--data {self.data} is text; pass --model gpt (or FILE.py:FACTORY)")
        if text and self.augment:
            raise HeterogradError("--augment crops and flips images; text has none, drop --augment")
        defaults = TrainConfig()
        circuit_only = [
            ("--topology", self.topology != defaults.topology),
            ("--density", self.density != defaults.density),
            ("--device-model", self.device_model != defaults.device_model or bool(self.device_model_options)),
            ("--compile", self.compile),
            ("--theta-b with a p·u term", self.theta_b is not None and len(self.theta_b) > 1 and self.theta_b[1] != 0),
        ]
        if self.model != "mlp":  # mlp takes --hidden / --activation; the other models have their own layout
            circuit_only += [
                ("--hidden", tuple(self.hidden) != tuple(defaults.hidden)),
                ("--activation", self.activation != defaults.activation),
            ]
        bad = [flag for flag, on in circuit_only if on]
        if bad:
            hint = (
                " (set a zoo model's own options with --model-options, e.g. activation=tanh)"
                if any(b in ("--hidden", "--activation") for b in bad)
                else ""
            )
            raise HeterogradError(
                f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to a converted model "
                f"(--model {self.model}); drop {'it' if len(bad) == 1 else 'them'}{hint}"
            )
        if self.model == "mlp":
            both = [k for k in ("hidden", "activation") if k in self.model_options]
            if both:
                raise HeterogradError(
                    f"--model mlp takes its {' and '.join(both)} from --{' and --'.join(both)}, not from "
                    f"--model-options; drop {', '.join(k + '=' for k in both)} there (e.g. --hidden 64)"
                )
        if self.loss not in (None, "ce"):
            raise HeterogradError(f"--model trains with cross-entropy only, got --loss {self.loss}; drop --loss")
        if (self.theta_w is not None or self.theta_b is not None) and self.rule != "poly":
            raise HeterogradError("--theta-w/--theta-b apply only to --rule poly; drop them")

    def to_dict(self) -> dict[str, Any]:
        """The recorded config (``config.json``, checkpoints): options that do not apply to the run are ``None``.

        A converted model (``model`` set) records ``hidden``, ``activation`` (except ``mlp``, which uses them)
        and ``topology`` as ``None``: they describe a circuit.
        """
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        for name in not_applicable(d.get("model")):
            d[name] = None
        return d


def not_applicable(model: Any) -> tuple[str, ...]:
    """The circuit options a run of ``model`` records as ``None`` (none for circuits, ``model=None``)."""
    if model is None:
        return ()
    return ("topology",) if model == "mlp" else ("hidden", "activation", "topology")


def from_recorded(saved: dict[str, Any]) -> dict[str, Any]:
    """A recorded config (``config.json``, a checkpoint's) as ``TrainConfig`` arguments: the options it records
    as ``None`` because they do not apply to its model (`not_applicable`) are left to their defaults."""
    return {k: v for k, v in saved.items() if not (v is None and k in not_applicable(saved.get("model")))}


def without_ignored_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the options its rule or topology ignored set to ``None``.

    heterograd 0.1.0 recorded every option in ``config.json`` and checkpoints, also those the run
    ignored (``feedback_gain`` of an ``fa`` run, ``density`` of a ``layered`` one); they had no effect,
    so resuming such a run reads them as unset instead of rejecting the checkpoint.
    """
    out = from_recorded(saved)
    rule, topology = out.get("rule"), out.get("topology")
    if isinstance(rule, str) and rule in RULES:
        takes = rule_hyperparameters(rule)
        for name in ("weight_decay", "feedback_gain", "theta_w", "theta_b"):
            if name in out and name not in takes:
                out[name] = None
        given = {k: out.get(k) for k in ("weight_decay", "feedback_gain", "theta_w", "theta_b")}
        for name in RULES[rule].unused_hyperparameters({k: v for k, v in given.items() if v is not None}):
            out[name] = None
    if isinstance(topology, str) and topology not in MASKED_TOPOLOGIES:
        out["density"] = None
    return out


#: ``--amp`` modes of the module engine: ``none`` or ``bf16`` (``torch.autocast`` to bfloat16, float32 weights).
AMP_MODES: tuple[str, ...] = ("none", "bf16")


def _check_amp(amp: object, dtype: str, device: str) -> None:
    """``--amp``: a known mode, on a float32 model; fp16 is refused with the reason (on any device)."""
    if amp == "fp16":
        where = "on CPU autocast has no float16 path, and " if str(device).startswith("cpu") else ""
        raise HeterogradError(
            f"--amp fp16 is not supported: {where}float16 needs loss scaling, which would scale the rule's "
            "signals but not its weight-decay term; use --amp bf16"
        )
    if not isinstance(amp, str) or amp not in AMP_MODES:
        raise unknown_choice("amp", amp, AMP_MODES)
    if amp != "none" and dtype != "float32":
        raise HeterogradError(
            f"--amp {amp} autocasts a float32 model (weights and B stay float32); drop --dtype {dtype} or --amp"
        )


RULE_DEFAULTS: dict[str, float] = RUN_DEFAULTS  # where the rule has them; hsp's gain is 0.5 (rules.run_defaults)
#: ``--lr`` not set: the step size of each ``--optimizer`` (adaptive optimisers divide by the gradient's scale,
#: so they need a far smaller step than plain SGD: ``adam`` at 0.05 wrecks LeNet-5).
LR_DEFAULTS: dict[str, float] = {"sgd": 0.05, "momentum": 0.05, "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}
MASKED_TOPOLOGIES = ("sparse", "amorphous")  # the topologies --density applies to

#: ``--model`` names: the zoo of `heterograd.models`, the small transformer (``--data sorting``) and the same
#: transformer as a character-level language model (``gpt``, ``--data text:PATH`` or ``pystdlib``).
MODULE_MODELS: tuple[str, ...] = (*MODELS, "transformer", "gpt")
#: sequence tasks (inputs are token indices): only for a ``--model`` that reads tokens.
SEQUENCE_DATA: tuple[str, ...] = ("sorting",)
#: learning-rate schedules of the module engine: ``constant`` or ``cosine`` (to 0 at the last step).
SCHEDULES: tuple[str, ...] = ("constant", "cosine")

_EXAMPLES = {
    "rule": "hsp",
    "activation": "tanh",
    "topology": "layered",
    "feedback_init": "random",
    "optimizer": "sgd",
    "dtype": "float32",
    "device": "cpu",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, lo: int, optional: bool = False) -> None:
    """``value`` must be an int (not bool) ``>= lo``; the error names the flag and an example."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < lo:
        unset = " or leave it unset" if optional else ""
        raise HeterogradError(f"{_flag(name)} must be an integer >= {lo}, got {value!r}; pass e.g. {max(lo, 1)}{unset}")


def _check_real(name: str, value: Any) -> None:
    """``value`` must be a finite real number (not bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise HeterogradError(f"{_flag(name)} must be a finite number, got {value!r}; pass e.g. {_flag(name)} 0.05")


# --------------------------------------------------------------------------- config files
#: keys that ``config.json`` records about a run but that do not configure one; a config file may hold
#: them (so any run's ``config.json`` can be fed back) and they are ignored.
RECORDED_ONLY = frozenset({"environment", "rule_equation", "data_source"})

_FORMATS = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``) file into a mapping.

    Raises `HeterogradError` for a missing file, another suffix, a syntax error or a file whose
    top level is not a table / mapping / object.
    """
    p = Path(path)
    kind = _FORMATS.get(p.suffix.lower())
    if kind is None:
        raise HeterogradError(f"--config {p}: unknown file type {p.suffix!r}; use a .toml, .yaml, .yml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise HeterogradError(f"--config {p}: cannot read it ({exc.strerror}); pass an existing file") from None
    try:
        if kind == "JSON":
            data = json.loads(text)
        elif kind == "TOML":
            data = tomllib.loads(text)
        else:
            data = _load_yaml(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise HeterogradError(f"--config {p}: not valid {kind} ({exc})") from None
    except Exception as exc:  # yaml.YAMLError
        first = (str(exc).strip().splitlines() or [""])[0]
        raise HeterogradError(f"--config {p}: not valid {kind} ({type(exc).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise HeterogradError(f"--config {p}: the top level must be a table of key = value, got {type(data).__name__}")
    return data


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that ``1e-4`` is a number (YAML 1.1 alone reads it as a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    number = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", number, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects


def load_config_file(
    path: str | Path, schema: type = TrainConfig, recorded_only: frozenset[str] = RECORDED_ONLY
) -> dict[str, Any]:
    """Read a config file and check it against the fields of ``schema`` (a dataclass, default `TrainConfig`).

    The file has the same keys as the ``config.json`` a run writes (so that file reproduces the run); the
    keys in ``recorded_only`` (for training runs ``environment`` and ``rule_equation``) are accepted and
    dropped. Any other unknown key, or a value of the wrong type, raises one `HeterogradError` naming
    the key. Lists become tuples where the field is a tuple. Returns ``{field: value}`` for
    ``schema(**values)``; value ranges are checked later by ``schema.validate()``.
    """
    data = read_config_file(path)
    if schema is TrainConfig:  # a --model run's config.json records circuit options as null: not set
        data = from_recorded(data)
    hints = typing.get_type_hints(schema)
    fields = [f.name for f in dataclasses.fields(schema)]
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in recorded_only:
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise HeterogradError(f"--config {path}: unknown key {key!r}; {hint}valid keys: {', '.join(fields)}")
        tp = hints[key]
        if not _has_type(value, tp):
            raise HeterogradError(
                f"--config {path}: key {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            )
        out[key] = _as_tuples(value, tp)
    return out


def _has_type(value: Any, tp: Any) -> bool:
    """Whether a parsed value fits a field annotation (str, int, float, bool, None, unions, tuples, lists, dicts).

    Tuple and list fields also take a comma-separated string (``hidden = "128,128"``), as on the command line.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if isinstance(value, str):
            return True
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args, strict=True))
        return all(_has_type(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _as_tuples(value: Any, tp: Any) -> Any:
    """Turn (nested) lists into tuples where the annotation says tuple (JSON, TOML and YAML only have lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is not type(None) and _has_type(value, a):
                return _as_tuples(value, a)
        return value
    if origin is tuple and isinstance(value, list | tuple):
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_as_tuples(v, a) for v, a in zip(value, inner, strict=True))
    return value


def _type_name(tp: Any) -> str:
    """Readable name of a field annotation for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        return "a list (or a comma-separated string)"
    if origin is dict:
        return "a table of name = value"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
