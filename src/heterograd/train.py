"""The training loop: the one place that changes weights.

Functional core::

    out = local_step(circuit, rule, rule_state, loss, x, y)   # signals -> deltas, no mutation
    steps, motif_state = motif.update(out.deltas.flat(), motif_state, tensors)
    apply_steps(circuit, steps)                                # the only mutation

and `Trainer`, which runs epochs, logs probes, evaluates, detects
divergence and writes the run directory (``config.json``, ``metrics.csv``,
``summary.json``, ``timing.json``, ``loss.png``, ``probes.png`` and, with
checkpointing or on SIGINT/SIGTERM, ``checkpoint.pt``). ``summary.json`` is a
pure function of config, data and machine (bit-identical on a rerun); wall-clock
time lives in ``timing.json``. ``Trainer.resume(dir).fit(dir)`` continues an
interrupted run to the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import (
    checkpoint_path,
    config_differences,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
    to_device,
)
from .circuits import Circuit, Trace
from .config import TrainConfig, without_ignored_options
from .data import Dataset, iterate_minibatches, load_dataset
from .errors import HeterogradError
from .hardware import HardwareCircuit, attach_hardware
from .losses import Loss, get_loss
from .optim import Motif, make_motif
from .optim.motifs import SGD as SGDMotif
from .probes import measure
from .progress import Progress
from .results import prepare_out_dir, prepare_run_dir, write_csv, write_json
from .rules import Deltas, Params, PendingDelta, Rule, Signals, make_rule
from .runtime import DTYPES, environment


# --------------------------------------------------------------------------- functional core
@dataclass(frozen=True)
class StepOutput:
    """What one local step computed (nothing applied yet).

    Attributes:
        loss: 0-d tensor, mean batch loss before the update.
        trace: forward signals at time t.
        u: feedback potentials at time t', ``u[l]`` ``(n, n_l)``.
        deltas: the rule's deltas (feedback and masked forward deltas already masked).
        rule_state: the rule's new state.
    """

    loss: Tensor
    trace: Trace
    u: list[Tensor]
    deltas: Deltas
    rule_state: Any


def local_step(circuit: Circuit, rule: Rule, rule_state: Any, loss: Loss, x: Tensor, y: Tensor) -> StepOutput:
    """Forward pass, teaching signal, feedback pass and the rule's deltas for one batch.

    Args:
        x: ``(n, n_0)`` inputs; y: ``(n,)`` labels or ``(n, K)`` targets.
    """
    trace = circuit.run_forward(x)
    out = trace.output
    batch_loss = loss(out, y)
    u = rule.teaching(circuit, trace, x, y, loss)
    if u is None:
        u = circuit.run_feedback(trace, circuit.output_error(trace, loss.error(out, y)))
    signals = Signals.collect(circuit, trace, u)
    t, L = circuit.plastic_tensors(), circuit.depth  # = Params.of(circuit), without per-element ParameterList access
    params = Params(tuple(t[:L]), tuple(t[L : 2 * L]), tuple(t[2 * L :]))
    deltas, rule_state = rule.deltas(signals, params, rule_state)
    for k, d in enumerate(deltas.B):
        m = circuit.mask(k)
        if d is not None and m is not None:
            d.mul_(m)
    for l, d in enumerate(deltas.W, start=1):
        m = circuit.forward_mask(l)
        if d is not None and m is not None:
            d.mul_(m)
    return StepOutput(batch_loss, trace, u, deltas, rule_state)


def _defined_in(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO that defines attribute ``name``."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


@torch.no_grad()
def layerwise_sgd_step(
    circuit: Circuit, rule: Rule, rule_state: Any, motif: Motif, motif_state: Any, loss: Loss, x: Tensor, y: Tensor
) -> tuple[Tensor, Any] | None:
    """`local_step` + plain-SGD ``motif.update`` + `apply_steps`, each delta applied as soon as it exists.

    The deltas of all layers are never alive at once (the step's peak memory is the trace plus one layer's
    deltas, as backprop's), and a `PendingDelta` is added without being formed (a ``ΔW`` accumulated into
    ``W`` by its matrix product, a ``ΔB`` added as a view with its gain folded into the step). The same
    weights and motif state as the three calls, to rounding (the fused additions round differently; a
    float64 test pins the equality), for a rule with `layer_deltas` and the ``sgd`` motif; returns
    ``(batch loss, new motif state)``, or ``None`` (nothing done) when the rule or the motif does not allow it.
    """
    if (
        not isinstance(motif, SGDMotif)
        or _defined_in(type(rule), "layer_deltas") in (Rule, None)
        or _defined_in(type(rule), "layer_deltas") is not _defined_in(type(rule), "deltas")  # a subclass's deltas
        or type(rule).teaching is not Rule.teaching  # rules with their own teaching signal: not layer-wise
    ):
        return None
    trace = circuit.run_forward(x)
    out = trace.output
    batch_loss, error = loss.loss_and_error(out, y)
    u = circuit.run_feedback(trace, circuit.output_error(trace, error))
    t, L = circuit.plastic_tensors(), circuit.depth
    params = Params(tuple(t[:L]), tuple(t[L : 2 * L]), tuple(t[2 * L :]))
    pieces = rule.layer_deltas(Signals.collect(circuit, trace, u), params, rule_state)
    if pieces is None:
        return None
    offset = {"W": 0, "b": L, "B": 2 * L}
    done: list[Tensor | None] = [None] * len(t)
    for kind, k, d in pieces:
        if d is None:
            continue
        m = circuit.mask(k) if kind == "B" else circuit.forward_mask(k + 1) if kind == "W" else None
        i = offset[kind] + k
        if isinstance(d, PendingDelta):
            if m is None:  # added without being formed (to rounding the same as below)
                d.add_to(t[i], motif.lr)
                done[i] = t[i]
                continue
            d = d.materialize()
        if m is not None:  # the same masks local_step applies: feedback masks and fixed forward wiring
            d.mul_(m)
        t[i].add_(d, alpha=motif.lr)  # = apply_steps' t += lr * d
        done[i] = t[i]
        del d
    _, motif_state = motif.update(done, motif_state, t)  # plain SGD: only counts which tensors were stepped
    return batch_loss, motif_state


def compile_local_step() -> Callable[[Circuit, Rule, Any, Loss, Tensor, Tensor], StepOutput]:
    """`local_step` (the pure part of a step: signals -> deltas, nothing mutated) under ``torch.compile``.

    Same signature and result as `local_step`; motif and `apply_steps` stay eager. The first
    call compiles (tens of seconds); a failure to compile raises `HeterogradError` with the reason.
    """
    if not hasattr(torch, "compile"):
        raise HeterogradError(f"torch {torch.__version__} has no torch.compile; upgrade torch or drop --compile")

    def pure(circuit: Circuit, rule: Rule, rule_state: Any, loss: Loss, x: Tensor, y: Tensor) -> tuple[Any, ...]:
        o = local_step(circuit, rule, rule_state, loss, x, y)
        return o.loss, o.trace.h, o.trace.p, o.u, o.deltas.W, o.deltas.b, o.deltas.B, o.rule_state

    compiled = torch.compile(pure, dynamic=False)

    def step(circuit: Circuit, rule: Rule, rule_state: Any, loss: Loss, x: Tensor, y: Tensor) -> StepOutput:
        try:
            bl, h, p, u, dW, db, dB, state = compiled(circuit, rule, rule_state, loss, x, y)
        except HeterogradError:
            raise
        except Exception as exc:  # dynamo / inductor / C compiler failures
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise HeterogradError(
                f"torch.compile failed on this machine ({type(exc).__name__}: {first}); run without --compile"
            ) from exc
        return StepOutput(bl, Trace(tuple(h), tuple(p)), list(u), Deltas(list(dW), list(db), list(dB)), state)

    return step


@torch.no_grad()
def apply_steps(circuit: Circuit, steps: Sequence[Tensor | None], hardware: HardwareCircuit | None = None) -> None:
    """Add each step to its plastic tensor (canonical order). The only weight mutation in heterograd.

    ``steps`` may be an `heterograd.optim.ScaledSteps` (``t += alpha * s``, fused). With
    ``hardware`` the steps are requests written through its device arrays (`heterograd.hardware`).
    """
    if hardware is not None:
        hardware.apply(circuit.plastic_tensors(), steps)
        return
    pairs = [(t, s) for t, s in zip(circuit.plastic_tensors(), steps, strict=True) if s is not None]
    if pairs:  # one fused call (as torch.optim's foreach path) instead of a Python loop of add_
        alpha = getattr(steps, "alpha", 1.0)  # optim.ScaledSteps: t += alpha * s in the same pass
        torch._foreach_add_([t for t, _ in pairs], [s for _, s in pairs], alpha=alpha)


@torch.no_grad()
def evaluate(circuit: Circuit, loss: Loss, x: Tensor, y: Tensor, chunk: int = 4096) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` for regression) on ``x`` ``(N, n_0)``."""
    total, correct = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        out = circuit(x[i : i + chunk])
        yy = y[i : i + chunk]
        total += float(loss.per_sample(out, yy).double().sum())
        if yy.dim() == 1:
            correct += int((out.argmax(1) == yy).sum())
    n = max(1, x.shape[0])
    return total / n, (correct / n if y.dim() == 1 else None)


# --------------------------------------------------------------------------- trainer
INITIAL_LOSS_EXAMPLES = 1024
"""At most this many test examples (evenly spaced) measure the untrained model's test loss (`no_learning`)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped cleanly on SIGINT/SIGTERM at a step boundary (a ``KeyboardInterrupt``).

    Attributes:
        signum: the signal received.
        step: steps completed.
        checkpoint: the checkpoint written (``None`` when the run had no output folder).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted by {signal.Signals(signum).name} after step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def _first_n(ds: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    """Apply ``n_train`` / ``n_test`` to a preloaded dataset (first N examples; clear error if too few)."""
    for what, n, avail in (("n_train", n_train, ds.x_train.shape[0]), ("n_test", n_test, ds.x_test.shape[0])):
        if n is not None and n > avail:
            raise HeterogradError(
                f"{what}={n} exceeds the {avail} examples of dataset {ds.name!r}; "
                f"pass {what} <= {avail} or leave it unset"
            )
    if n_train is None and n_test is None:
        return ds
    ntr = ds.x_train.shape[0] if n_train is None else n_train
    nte = ds.x_test.shape[0] if n_test is None else n_test
    return dataclasses.replace(
        ds, x_train=ds.x_train[:ntr], y_train=ds.y_train[:ntr], x_test=ds.x_test[:nte], y_test=ds.y_test[:nte]
    )


#: ``config.data`` of a run on a `Dataset` passed in Python: ``python:<its name>`` (not loadable by name).
PYTHON_DATA_PREFIX = "python:"


def record_dataset_name(c: TrainConfig, dataset: Dataset) -> None:
    """Record a dataset passed in Python as ``config.data = "python:<dataset.name>"`` unless it is the named one.

    A preloaded built-in set (``load_dataset(config.data)``, same name) keeps its name; any other (your own data)
    gets the prefix, so ``config.json`` says what the run trained on and ``--config`` refuses to rerun it on
    another set (`heterograd.data.load_dataset` rejects ``python:`` names with the way to rerun it).
    """
    if dataset.name != c.data and c.data != PYTHON_DATA_PREFIX + dataset.name:
        c.data = PYTHON_DATA_PREFIX + dataset.name


def _same_fingerprint(a: Any, b: Any) -> bool:
    """Fingerprints from `heterograd.checkpoint.data_fingerprint` agree (sums to 1e-9 relative)."""
    if not isinstance(a, list) or len(a) != len(b):
        return False
    for (sa, s1a, s2a), (sb, s1b, s2b) in zip(a, b, strict=True):
        if list(sa) != list(sb):
            return False
        for x, y in ((s1a, s1b), (s2a, s2b)):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9):
                return False
    return True


@dataclass
class RunResult:
    """Outcome of `Trainer.fit`: the summary, the logged rows and the trained circuit."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    circuit: Circuit
    out_dir: Path | None


class Trainer:
    """Runs a `TrainConfig`: builds data, circuit, rule and motif, then trains.

    Args:
        config: the run's configuration (validated here).
        dataset: optionally a preloaded `Dataset` (else ``load_dataset(config.data)``).
    """

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        self.config = config.validate()
        c = self.config
        self.dtype = DTYPES[c.dtype]
        self.device = torch.device(c.device)
        if dataset is None:
            ds = load_dataset(c.data, seed=c.seed, n_train=c.n_train, n_test=c.n_test)
        elif not isinstance(dataset, Dataset):
            raise HeterogradError(
                f"dataset must be a heterograd Dataset, got {type(dataset).__name__}; use load_dataset"
            )
        else:
            ds = _first_n(dataset, c.n_train, c.n_test)
            record_dataset_name(c, dataset)
        self.data = ds.to(device=self.device, dtype=self.dtype)
        if c.loss is None:
            c.loss = "ce" if self.data.n_classes is not None else "mse"
        if c.loss == "ce" and self.data.n_classes is None:
            raise HeterogradError(f"--loss ce needs a classification dataset, {c.data!r} is regression; use --loss mse")
        self.loss = get_loss(c.loss)
        self.circuit = Circuit(
            [self.data.input_dim, *c.hidden, self.data.output_dim],
            c.activation,
            topology=c.topology,
            density=1.0 if c.density is None else c.density,  # None: the topology has no mask
            feedback_init=c.feedback_init,
            seed=c.seed,
            dtype=self.dtype,
            device=self.device,
        )
        self.rule = make_rule(
            c.rule, weight_decay=c.weight_decay, feedback_gain=c.feedback_gain, theta_w=c.theta_w, theta_b=c.theta_b
        )
        self.hardware, self.rule = attach_hardware(
            self.circuit, self.rule, c.device_model, c.device_model_options, c.seed
        )  # (None, rule) for the ideal device model
        self.motif: Motif = make_motif(c.optimizer, lr=c.lr, **c.optimizer_options)
        self.rule_state = self.rule.init(self.circuit)
        self.local_step = compile_local_step() if c.compile else local_step
        self.motif_state = self.motif.init(self.circuit.plastic_tensors())
        self._init_position()

    def _init_position(self) -> None:
        """The loop's bookkeeping: data order, steps per epoch, the fixed probe batch, the position in the run."""
        c = self.config
        self.generator = torch.Generator().manual_seed(c.seed)
        n = self.data.x_train.shape[0]
        self.steps_per_epoch = max(1, n // c.batch_size) if n >= c.batch_size else 1
        self.log_every = c.log_every or max(1, self.steps_per_epoch // 4)
        k = min(c.probe_size, n)
        self.probe_x, self.probe_y = self.data.x_train[:k], self.data.y_train[:k]
        self.step_count = 0
        self.rows: list[dict[str, Any]] = []
        # position in the data stream: next batch `batch_index` of epoch `epoch`, whose shuffling
        # permutation is drawn from `epoch_generator_state` (what a checkpoint needs to continue exactly)
        self.epoch = 0
        self.batch_index = 0
        self.epoch_generator_state = self.generator.get_state()
        self.loss_sum = 0.0
        self.loss_count = 0
        self.last_train_loss = math.nan
        self.elapsed = 0.0
        self.initial_test_loss: float | None = None  # the untrained model's test loss (the no-learning check)
        self.checkpoint_file: Path | None = None
        self.resumed_from: Path | None = None
        self._run_dir: Path | None = None  # the folder this run writes to (set by resume and the first fit)
        self._stop_signal: int | None = None

    # ..................................................................... steps
    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One local learning step on a batch; returns the batch loss before the update (0-d)."""
        if self.hardware is None and self.local_step is local_step:  # plain SGD: apply each delta as it comes
            done = layerwise_sgd_step(
                self.circuit, self.rule, self.rule_state, self.motif, self.motif_state, self.loss, x, y
            )
            if done is not None:
                self.step_count += 1
                loss_value, self.motif_state = done
                return loss_value
        if self.hardware is None:
            out = self.local_step(self.circuit, self.rule, self.rule_state, self.loss, x, y)
        else:
            with self.hardware.noisy_reads():
                out = self.local_step(self.circuit, self.rule, self.rule_state, self.loss, x, y)
        self.rule_state = out.rule_state
        steps, self.motif_state = self.motif.update(out.deltas.flat(), self.motif_state, self.circuit.plastic_tensors())
        apply_steps(self.circuit, steps, self.hardware)
        self.step_count += 1
        return out.loss

    def epoch_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch's batches ``(x, y)``, drawn from ``self.generator`` (a shuffled pass over the training set).

        A resumed run redraws the epoch from the generator state at its start and skips the batches done, so a
        subclass that draws its batches differently must draw them from ``self.generator`` alone.
        """
        return iterate_minibatches(
            self.data.x_train,
            self.data.y_train,
            self.config.batch_size,
            generator=self.generator,
            drop_last=self.data.x_train.shape[0] >= self.config.batch_size,
        )

    def epoch_metrics(self) -> dict[str, Any]:
        """The columns added to the logged row at the end of each epoch: ``test_loss`` and ``test_accuracy``."""
        tl, ta = self.evaluate_test()
        return {"test_loss": tl, "test_accuracy": ta}

    def recorded_extra(self) -> dict[str, Any]:
        """Keys added to ``config.json`` besides the config (what the data were, for instance); none here."""
        return {}

    def write_run_files(self, out: Path) -> None:
        """Write a subclass's own files into the run folder when a run starts (nothing here)."""

    def probe(self) -> dict[str, float]:
        """Probes on the fixed probe batch (first ``probe_size`` training samples), nothing applied."""
        with torch.no_grad():
            out = local_step(self.circuit, self.rule, self.rule_state, self.loss, self.probe_x, self.probe_y)
        lam = self.config.weight_decay or 0.0  # None: the rule has no separate λ (poly with θ given)
        return measure(self.circuit, self.probe_x, self.probe_y, self.loss, out.u, out.deltas, lam, out.trace)

    def evaluate_test(self, every: int = 1) -> tuple[float, float | None]:
        """Mean loss and accuracy (``None`` for regression) on the test set (every ``every``-th example)."""
        return evaluate(self.circuit, self.loss, self.data.x_test[::every], self.data.y_test[::every])

    def untrained_test_loss(self) -> float:
        """The untrained model's mean test loss, what "learned nothing" is measured against (`no_learning_reason`).

        Measured on an evenly spaced subset of at most `INITIAL_LOSS_EXAMPLES` test examples (every ``k``-th), an
        unbiased estimate of the full test loss at a fraction of a full pass: a one-epoch run of a large network
        would otherwise spend most of what the loop adds to the training steps on it.
        """
        every = max(1, math.ceil(self.data.x_test.shape[0] / INITIAL_LOSS_EXAMPLES))
        return self.evaluate_test(every=every)[0]

    def divergence_reason(self, train_loss: float) -> str | None:
        """Why the run counts as diverged (``None`` if it does not): a non-finite loss, non-finite
        weights, or a weight beyond ``config.divergence_threshold`` in absolute value."""
        if not math.isfinite(train_loss):
            return "non-finite loss"
        lim = self.config.divergence_threshold
        for name, t in self.named_tensors():
            m = float(t.detach().abs().max()) if t.numel() else 0.0
            if not math.isfinite(m):
                return f"non-finite weights in {name}"
            if m > lim:
                return f"weights exceeded {lim:g} (max |{name}| = {m:.3g})"
        return None

    def named_tensors(self) -> list[tuple[str, Tensor]]:
        """``(name, tensor)`` of every plastic tensor (``W1..``, ``b1..``, feedback edges), for the divergence check."""
        c = self.circuit
        names = [f"W{l}" for l in range(1, c.depth + 1)] + [f"b{l}" for l in range(1, c.depth + 1)]
        names += [e.name for e in c.edges]
        return list(zip(names, c.plastic_tensors(), strict=True))

    def weights_finite(self) -> bool:
        """True when every plastic tensor is finite and within ``divergence_threshold``."""
        return self.divergence_reason(0.0) is None

    # ..................................................................... checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see `heterograd.checkpoint`)."""
        return {
            "circuit": {k: v.detach().cpu() for k, v in self.circuit.state_dict().items()},
            "rule_state": to_device(self.rule_state, torch.device("cpu")),
            "motif_state": to_device(self.motif_state, torch.device("cpu")),
            **self._position_state(),
            **({} if self.hardware is None else {"hardware": self.hardware.state_dict()}),
        }

    def _position_state(self) -> dict[str, Any]:
        """The checkpoint's engine-independent part: config, data order, position, logged rows, data identity."""
        return {
            "config": self.config.to_dict(),
            "generator": self.epoch_generator_state.clone(),
            "epoch": self.epoch,
            "batch": self.batch_index,
            "step": self.step_count,
            "rows": [dict(r) for r in self.rows],
            "loss_sum": float(self.loss_sum),
            "loss_count": int(self.loss_count),
            "last_train_loss": float(self.last_train_loss),
            "data_fingerprint": data_fingerprint(self.data.x_train, self.data.y_train),
            "wall_seconds": float(self.elapsed),
            "versions": environment(),
            "initial_test_loss": self.initial_test_loss,
        }

    def load_state_dict(self, ck: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore the state written by `state_dict` (config compatibility is checked by `resume`)."""
        self._check_data(ck, source)
        try:
            self.circuit.load_state_dict(ck["circuit"])
        except (RuntimeError, KeyError, TypeError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise HeterogradError(f"{source} does not fit this circuit ({msg}); start a new run") from None
        self._load_position(ck, source)
        self.rule_state = to_device(ck["rule_state"], self.device)
        self.motif_state = to_device(ck["motif_state"], self.device)
        if self.hardware is not None and "hardware" in ck:
            self.hardware.load_state_dict(ck["hardware"])

    def _check_data(self, ck: dict[str, Any], source: str) -> None:
        """The checkpoint was trained on these training data (fingerprints agree), else a clear error."""
        fp = data_fingerprint(self.data.x_train, self.data.y_train)
        if not _same_fingerprint(ck["data_fingerprint"], fp):
            raise HeterogradError(
                f"cannot resume from {source}: the training data differ from the data it was trained on "
                f"(dataset {self.config.data!r} changed on disk?); restore the data or start a new run"
            )

    def _load_position(self, ck: dict[str, Any], source: str) -> None:
        """Restore what `_position_state` wrote: data order, position, rows, running loss, time."""
        ints = {k: ck[k] for k in ("epoch", "batch", "step", "loss_count")}
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints.values()) or not (
            ck["batch"] < self.steps_per_epoch
        ):
            raise HeterogradError(f"{source} holds an invalid training position {ints}; delete it and rerun")
        gen = ck["generator"]
        try:
            self.generator.set_state(gen)
        except (RuntimeError, TypeError) as exc:
            raise HeterogradError(f"{source} holds an invalid generator state ({exc}); delete it and rerun") from None
        self.epoch_generator_state = gen.clone()
        self.epoch, self.batch_index, self.step_count = ck["epoch"], ck["batch"], ck["step"]
        self.rows = [dict(r) for r in ck["rows"]]
        self.loss_sum, self.loss_count = float(ck["loss_sum"]), ck["loss_count"]
        self.last_train_loss = float(ck["last_train_loss"])
        self.elapsed = float(ck.get("wall_seconds", 0.0))
        initial = ck.get("initial_test_loss")  # absent in checkpoints of heterograd <= 0.2.0
        self.initial_test_loss = None if initial is None else float(initial)

    def save_checkpoint(self, out_dir: str | Path) -> Path:
        """Atomically write ``out_dir/checkpoint.pt``; returns its path."""
        self.checkpoint_file = save_checkpoint(checkpoint_path(out_dir), self.state_dict())
        return self.checkpoint_file

    @classmethod
    def resume(cls, run_dir: str | Path, dataset: Dataset | None = None, **overrides: Any) -> Trainer:
        """Rebuild a trainer from ``run_dir/checkpoint.pt``; continue it with ``.fit(run_dir)``.

        ``overrides`` may change ``epochs`` (to train longer) and ``checkpoint_every``; any other
        field must equal the checkpoint's, else a `HeterogradError` names the field.
        """
        ck = load_checkpoint(run_dir)
        src = str(checkpoint_path(run_dir))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = without_ignored_options(dict(ck["config"]))  # 0.1.0 recorded ignored options too
        unknown = sorted(set(saved) - known)
        if unknown:
            raise HeterogradError(
                f"{src} has config fields {', '.join(unknown)} this heterograd does not know; resume it with "
                "the heterograd version that wrote it"
            )
        bad = sorted(set(overrides) - known)
        if bad:
            raise HeterogradError(f"unknown training option(s) {', '.join(bad)} for resume; see TrainConfig")
        try:
            base = TrainConfig(**saved).validate()
        except TypeError as exc:
            raise HeterogradError(f"{src} holds a malformed config ({exc}); delete it and rerun") from None
        cfg = dataclasses.replace(base, **overrides).validate()
        diffs = config_differences(base.to_dict(), cfg.to_dict())
        if diffs:
            raise HeterogradError(
                f"cannot resume {run_dir}: {'; '.join(diffs)}; drop the differing option(s) or start a new run "
                "in another --out folder"
            )
        done = ck["epoch"] + (1 if ck["batch"] > 0 else 0)
        if cfg.epochs < done:
            raise HeterogradError(
                f"--epochs {cfg.epochs} is fewer than the {done} epoch(s) the checkpoint has started; "
                f"pass --epochs >= {done}"
            )
        trainer = cls(cfg, dataset)
        trainer.load_state_dict(ck, src)
        trainer.resumed_from = checkpoint_path(run_dir)
        trainer._run_dir = Path(run_dir).resolve()
        return trainer

    @contextlib.contextmanager
    def _signals_stop_training(self, enabled: bool) -> Iterator[None]:
        """While training, SIGINT/SIGTERM request a clean stop at the next step boundary.

        A second signal stops at once (KeyboardInterrupt); previous handlers are restored afterwards.
        Only active in the main thread (Python delivers signals there).
        """
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def stop_requested(self) -> bool:
        """True once SIGINT/SIGTERM asked for a stop; checked after every step.

        Data-parallel subclasses override it to agree across ranks (e.g. all-reduce MAX of the flag,
        then set ``self._stop_signal``) so that every rank stops at the same step.
        """
        return self._stop_signal is not None

    # ..................................................................... loop
    def fit(
        self,
        out_dir: str | Path | None = None,
        *,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        handle_signals: bool = True,
        tensorboard: bool = False,
        overwrite: bool = False,
    ) -> RunResult:
        """Train until ``config.epochs`` epochs are done; write the run directory if ``out_dir`` is given.

        ``out_dir`` must be empty (or new) unless it is this run's own folder (the one it was resumed
        from, or fitted into before); ``overwrite=True`` clears a non-empty earlier run folder first.

        A diverging run (non-finite loss, or weights beyond ``divergence_threshold``) stops at the
        logged step where it is detected, keeps everything written so far and reports
        ``diverged: true``, ``diverged_step`` and ``diverged_reason`` in the summary; it is a result,
        not an exception. A finished run that learned nothing (final test loss above the untrained
        model's, or test accuracy at chance: `no_learning_reason`) says so in ``no_learning``.

        With ``config.checkpoint_every = K`` a checkpoint is written every K steps and at the end (only
        when there is an ``out_dir``: checkpoints live in the run folder). With
        ``handle_signals`` (default), SIGINT / SIGTERM stop training at the next step boundary: the
        checkpoint, ``metrics.csv``, ``timing.json`` and figures are written and
        `TrainingInterrupted` is raised; ``Trainer.resume(out_dir).fit(out_dir)`` continues
        and ends with the same weights and metrics as an uninterrupted run.

        A new run that fails or is interrupted before its first step leaves no files behind (the folder is
        as before: nothing of it blocks a rerun); an interruption there raises `TrainingInterrupted`
        with ``checkpoint=None``.

        ``summary.json`` depends only on the configuration, data and machine (same seed, same file);
        wall-clock time goes to ``timing.json`` (and ``RunResult.summary["wall_seconds"]``).

        ``progress`` shows a bar on a terminal and, when stderr is not one (a log file, CI), a line per
        epoch (at most 10 per run). ``tensorboard`` also writes every logged row as scalars and the
        config as text to ``out_dir/tensorboard`` (needs ``heterograd[tensorboard]``).
        """
        created = out_dir is not None and not Path(out_dir).exists()
        self._fresh_out: Path | None = None
        try:
            return self._fit(
                out_dir,
                progress=progress,
                on_log=on_log,
                handle_signals=handle_signals,
                tensorboard=tensorboard,
                overwrite=overwrite,
            )
        except BaseException as exc:
            fresh = self._fresh_out
            if fresh is None or self.step_count > 0:
                raise
            self._discard(fresh, created)  # nothing trained yet: leave no folder that blocks the rerun
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
                raise TrainingInterrupted(signal.SIGINT, 0, None) from exc
            raise

    @staticmethod
    def _discard(out: Path, created: bool) -> None:
        """Delete what a new run wrote into ``out`` (it was empty before), and ``out`` itself if it was created."""
        import shutil

        if not out.is_dir():
            return
        for e in out.iterdir():
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                e.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()

    def _fit(
        self,
        out_dir: str | Path | None = None,
        *,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        handle_signals: bool = True,
        tensorboard: bool = False,
        overwrite: bool = False,
    ) -> RunResult:
        """`fit` without the clean-up of a new run that fails before its first step."""
        c = self.config
        if tensorboard and out_dir is None:
            raise HeterogradError("--tensorboard writes next to metrics.csv and needs an output folder (--out)")
        if tensorboard:
            from .tensorboard import TensorBoardLog, require_tensorboard

            require_tensorboard()  # before anything is written
        out = None
        if out_dir is not None:
            own = self._run_dir is not None and Path(out_dir).resolve() == self._run_dir
            if own and overwrite:
                raise HeterogradError(f"--overwrite would delete the run being resumed in {out_dir}; drop --overwrite")
            out = prepare_out_dir(out_dir) if own else prepare_run_dir(out_dir, overwrite=overwrite)
            if not own:
                self._fresh_out = out  # empty now: what a failure before the first step leaves is removed
            self._run_dir = out.resolve()
        tb = TensorBoardLog(out / "tensorboard", self.step_count or None) if tensorboard and out is not None else None
        if out is not None:
            recorded = {**c.to_dict(), "environment": environment(), "rule_equation": self.rule.describe()}
            write_json(out / "config.json", {**recorded, **self.recorded_extra()})
            self.write_run_files(out)
            if tb is not None:
                tb.config(recorded)
        if self.step_count == 0 and self.initial_test_loss is None:
            self.initial_test_loss = self.untrained_test_loss()  # what "learned nothing" is measured against
        start = time.perf_counter()
        start_step = self.step_count
        diverged, diverged_step, reason = False, None, None
        loss_acc = torch.full((), self.loss_sum, dtype=torch.float64, device=self.device)
        n_acc = self.loss_count
        total_steps = c.epochs * self.steps_per_epoch
        bar = Progress(total_steps, f"{c.rule} on {c.data}", "step", enabled=progress, initial=self.step_count)
        self._stop_signal = None

        def sync_acc() -> None:
            self.loss_sum, self.loss_count = float(loss_acc), n_acc

        try:
            with self._signals_stop_training(handle_signals):
                for epoch in range(self.epoch, c.epochs):
                    if self.batch_index == 0:
                        self.epoch_generator_state = self.generator.get_state()
                    else:  # resumed mid-epoch: redraw the same permutation, skip the batches done
                        self.generator.set_state(self.epoch_generator_state)
                    skip = self.batch_index
                    batches = self.epoch_batches()
                    for i, (xb, yb) in enumerate(batches):
                        if i < skip:
                            continue
                        loss_acc += self.train_step(xb, yb).double()
                        n_acc += 1
                        end_of_epoch = i == self.steps_per_epoch - 1
                        if end_of_epoch:
                            self.epoch, self.batch_index = epoch + 1, 0
                            self.epoch_generator_state = self.generator.get_state()
                        else:
                            self.epoch, self.batch_index = epoch, i + 1
                        if self.step_count % self.log_every == 0 or end_of_epoch:
                            self.last_train_loss = float(loss_acc) / n_acc
                            loss_acc.zero_()
                            n_acc = 0
                            row: dict[str, Any] = {
                                "step": self.step_count,
                                "epoch": round(epoch + (i + 1) / self.steps_per_epoch, 4),
                                "train_loss": self.last_train_loss,
                            }
                            reason = self.divergence_reason(self.last_train_loss)
                            if reason is None and c.probes:
                                row.update(self.probe())
                            if end_of_epoch and reason is None:
                                row.update(self.epoch_metrics())
                            if reason is not None:
                                row["diverged"] = reason
                            self.rows.append(row)
                            if tb is not None:
                                tb.row(row)
                            if end_of_epoch or reason is not None:
                                bar.phase(epoch + 1, c.epochs, _epoch_line(row, epoch + 1, c.epochs))
                            if on_log is not None:
                                on_log(row)
                            if out is not None:
                                write_csv(out / "metrics.csv", self.rows)
                            if reason is not None:
                                diverged, diverged_step = True, self.step_count
                                break
                        bar.update(1, loss=f"{self.last_train_loss:.4g}")
                        if out is not None and c.checkpoint_every and self.step_count % c.checkpoint_every == 0:
                            sync_acc()
                            self.elapsed += time.perf_counter() - start
                            start = time.perf_counter()
                            self.save_checkpoint(out)
                        if self.stop_requested():
                            break
                    if diverged or self._stop_signal is not None:
                        break
                sync_acc()
                self.elapsed += time.perf_counter() - start
                start = time.perf_counter()
                if self._stop_signal is not None:
                    self._write_partial(out, self.step_count - start_step)
                    raise TrainingInterrupted(self._stop_signal, self.step_count, self.checkpoint_file)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
            if out is not None and self.rows:
                write_csv(out / "metrics.csv", self.rows)
        if out is not None and c.checkpoint_every and not diverged:
            self.save_checkpoint(out)
        summary = self._summary(diverged, diverged_step, reason, self.last_train_loss)
        self.elapsed += time.perf_counter() - start
        timing = self._timing(self.step_count - start_step)
        summary["wall_seconds"] = timing["wall_seconds"]  # the CLI contract of issue 2; the one timing field
        if out is not None:
            write_json(out / "summary.json", summary)
            write_json(out / "timing.json", timing)
            from .plots import plot_run

            plot_run(self.rows, out, title=self.title())
        return RunResult(summary, self.rows, self.circuit, out)

    def title(self) -> str:
        """The figures' title: rule, data and seed."""
        c = self.config
        return f"{c.rule} on {c.data} (seed {c.seed})"

    def _timing(self, steps_this_session: int) -> dict[str, Any]:
        return {
            "wall_seconds": round(self.elapsed, 3),
            "steps": self.step_count,
            "steps_this_session": steps_this_session,
            "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
        }

    def _write_partial(self, out: Path | None, steps_this_session: int) -> None:
        """On a requested stop: checkpoint, metrics, timing and figures of the steps done so far."""
        if out is None:
            return
        self.save_checkpoint(out)
        if self.rows:
            write_csv(out / "metrics.csv", self.rows)
        write_json(out / "timing.json", {**self._timing(steps_this_session), "interrupted": True})
        from .plots import plot_run

        plot_run(self.rows, out, title=self.title())

    def _summary(
        self, diverged: bool, diverged_step: int | None, reason: str | None, train_loss: float
    ) -> dict[str, Any]:
        c = self.config
        keys = self.probed_layers()
        # the last logged row was measured on these very weights (the final step ends an epoch): reuse it
        last = self.rows[-1] if self.rows and self.rows[-1].get("step") == self.step_count else {}
        if diverged:
            test_loss, test_acc = math.nan, None
            probes: dict[str, float] = {}
        else:
            test_loss, test_acc = (
                (last["test_loss"], last["test_accuracy"]) if "test_loss" in last else self.evaluate_test()
            )
            probes = self.probe() if c.probes else {}
        return {
            "data": c.data,
            "rule": c.rule,
            "seed": c.seed,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "final_train_loss": train_loss,
            "diverged": diverged,
            "diverged_step": diverged_step,
            "diverged_reason": reason if diverged else None,
            "no_learning": None if diverged else self.no_learning_reason(test_loss, test_acc),
            "initial_test_loss": self.initial_test_loss,
            "phi": [probes.get(f"phi{k}", math.nan) for k in keys],
            "align": [probes.get(f"align{k}", math.nan) for k in keys],
            "dc_score": probes.get("dc_score", math.nan),
            "steps": self.step_count,
            "device": str(self.device),
            **self.summary_extra(),
        }

    def chance_accuracy(self) -> tuple[float, int] | None:
        """``(p, n)``: the accuracy of always answering the test set's most frequent class, over its ``n`` labels
        (sequence targets: the non-ignored tokens); ``None`` for regression."""
        y = self.data.y_test
        if y.is_floating_point():
            return None
        labels = y.reshape(-1)
        labels = labels[labels >= 0]  # -100: no target (sequence positions without a loss)
        if labels.numel() == 0:
            return None
        return float(torch.bincount(labels.cpu()).max()) / labels.numel(), int(labels.numel())

    def no_learning_reason(self, test_loss: float, test_acc: float | None) -> str | None:
        """Why a finished (not diverged) run counts as having learned nothing, or ``None``; the criteria, fixed:

        * ``final test loss above the initial``: the test loss at the end exceeds the untrained model's
          (`untrained_test_loss`: on an evenly spaced subset of at most 1024 test examples);
        * ``test accuracy at chance``: the final test accuracy (judged after at least one epoch) is at most the
          majority-class rate ``p`` plus two standard errors, ``p + 2·sqrt(p(1-p)/n)`` over ``n`` test labels.
        """
        initial = self.initial_test_loss
        if initial is not None and math.isfinite(initial) and test_loss > initial:
            return f"final test loss {test_loss:.4g} above the initial {initial:.4g}"
        chance = self.chance_accuracy()
        if test_acc is not None and chance is not None:
            p, n = chance
            limit = p + 2.0 * math.sqrt(p * (1.0 - p) / n)
            if test_acc <= limit:
                return (
                    f"test accuracy {test_acc:.3f} at chance (<= {limit:.3f}: majority class {p:.3f} plus 2 "
                    f"standard errors over {n} test labels)"
                )
        return None

    def probed_layers(self) -> list[str]:
        """Suffixes of the probe columns the summary lists as ``phi``/``align``: ``_1``, ``_2``, ... (hidden layers)."""
        return [f"_{l}" for l in self.circuit.hidden_layers]

    def summary_extra(self) -> dict[str, Any]:
        """Fields a subclass adds to ``summary.json`` (none for circuits)."""
        return {}


def _epoch_line(row: dict[str, Any], epoch: int, epochs: int) -> str:
    """One log line for a finished epoch: step, train loss, test loss/accuracy, DC score (when measured)."""
    parts = [f"epoch {epoch}/{epochs}", f"step {row['step']}", f"train loss {row['train_loss']:.4g}"]
    if "test_loss" in row:
        parts.append(f"test loss {row['test_loss']:.4g}")
    if row.get("test_accuracy") is not None:
        parts.append(f"test acc {row['test_accuracy']:.3f}")
    if "dc_score" in row:
        parts.append(f"DC {row['dc_score']:.2f}")
    if "diverged" in row:
        parts.append(f"diverged: {row['diverged']}")
    return "  ".join(parts)


def train(
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    dataset: Dataset | None = None,
    **overrides: Any,
) -> RunResult:
    """Convenience: ``train(TrainConfig(...), "runs/x")`` or ``train(rule="fa", epochs=5)``."""
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    return Trainer(cfg, dataset).fit(out_dir, progress=progress)


def resume(
    run_dir: str | Path, *, progress: bool = False, dataset: Dataset | None = None, **overrides: Any
) -> RunResult:
    """Continue the run in ``run_dir`` from its ``checkpoint.pt`` (``overrides``: ``epochs``, ``checkpoint_every``)."""
    return Trainer.resume(run_dir, dataset, **overrides).fit(run_dir, progress=progress)
