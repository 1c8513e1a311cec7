"""The training loop: the one place that changes weights.

Functional core::

    out = local_step(circuit, rule, rule_state, loss, x, y)   # signals -> deltas, no mutation
    steps, motif_state = motif.update(out.deltas.flat(), motif_state, tensors)
    apply_steps(circuit, steps)                                # the only mutation

and :class:`Trainer`, which runs epochs, logs probes, evaluates, detects
divergence and writes the run directory (``config.json``, ``metrics.csv``,
``summary.json``, ``loss.png``, ``probes.png``).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__
from .circuits import ACTIVATIONS, FEEDBACK_INITS, TOPOLOGIES, Circuit, Trace
from .data import Dataset, iterate_minibatches, load_dataset
from .errors import HeterogradError, unknown_choice
from .losses import LOSSES, Loss, get_loss
from .optim import MOTIFS, Motif, make_motif
from .probes import measure
from .results import prepare_out_dir, write_csv, write_json
from .rules import RULES, Deltas, Params, Rule, Signals, make_rule

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- functional core
@dataclass(frozen=True)
class StepOutput:
    """What one local step computed (nothing applied yet).

    Attributes:
        loss: 0-d tensor, mean batch loss before the update.
        trace: forward signals at time t.
        u: feedback potentials at time t', ``u[l]`` ``(n, n_l)``.
        deltas: the rule's deltas (feedback deltas already masked).
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
    deltas, rule_state = rule.deltas(signals, Params.of(circuit), rule_state)
    for k, d in enumerate(deltas.B):
        m = circuit.mask(k)
        if d is not None and m is not None:
            d.mul_(m)
    return StepOutput(batch_loss, trace, u, deltas, rule_state)


@torch.no_grad()
def apply_steps(circuit: Circuit, steps: Sequence[Tensor | None]) -> None:
    """Add each step to its plastic tensor (canonical order). The only weight mutation in heterograd."""
    for t, s in zip(circuit.plastic_tensors(), steps, strict=True):
        if s is not None:
            t.add_(s)


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


# --------------------------------------------------------------------------- configuration
def parse_hidden(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"128,128"`` -> ``(128, 128)``; ``""`` or ``"none"`` -> no hidden layer."""
    if not isinstance(text, str):
        vals = tuple(text)
    else:
        t = text.strip().lower()
        if t in ("", "none", "0"):
            return ()
        try:
            vals = tuple(int(v) for v in t.replace(" ", "").split(","))
        except ValueError:
            raise HeterogradError(
                f"--hidden {text!r} is not a comma-separated list of widths; write e.g. --hidden 128,128"
            ) from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in vals):
        raise HeterogradError(f"--hidden widths must be positive integers, got {text!r}; e.g. --hidden 128,128")
    return vals


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved resolved as ``config.json``).

    Defaults reproduce ``heterograd train --data digits --rule hsp``.
    """

    data: str = "digits"
    rule: str = "hsp"
    epochs: int = 20
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "tanh"
    lr: float = 0.05
    batch_size: int = 32
    weight_decay: float = 1e-4
    feedback_gain: float = 1.0
    topology: str = "layered"
    density: float = 1.0
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
    optimizer_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`HeterogradError` naming the first problem and the fix."""
        if self.rule not in RULES:
            raise unknown_choice("rule", self.rule, RULES)
        if self.activation not in ACTIVATIONS:
            raise unknown_choice("activation", self.activation, ACTIVATIONS)
        if self.topology not in TOPOLOGIES:
            raise unknown_choice("topology", self.topology, TOPOLOGIES)
        if self.feedback_init not in FEEDBACK_INITS:
            raise unknown_choice("feedback init", self.feedback_init, FEEDBACK_INITS)
        if self.loss is not None and self.loss not in LOSSES:
            raise unknown_choice("loss", self.loss, LOSSES)
        if self.optimizer not in MOTIFS:
            raise unknown_choice("optimizer", self.optimizer, MOTIFS)
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", self.dtype, DTYPES)
        self.hidden = parse_hidden(self.hidden)
        checks: list[tuple[bool, str]] = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"--batch-size must be >= 1, got {self.batch_size}",
            ),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"--weight-decay must be >= 0, got {self.weight_decay}",
            ),
            (math.isfinite(self.feedback_gain), f"--feedback-gain must be finite, got {self.feedback_gain}"),
            (0 < self.density <= 1, f"--density must be in (0, 1], got {self.density}"),
            (self.log_every is None or self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}"),
            (self.probe_size >= 1, f"probe_size must be >= 1, got {self.probe_size}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise HeterogradError(msg)
        if self.topology == "sparse" and self.density == 1.0:
            pass  # sparse with density 1 is layered; allowed
        self.device = resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda if available); clear error if unavailable."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HeterogradError(f"--device {name} requested but CUDA is not available here; use --device cpu")
        return name
    raise HeterogradError(f"unknown device {name!r}; valid choices: cpu, cuda, cuda:N, auto")


def environment() -> dict[str, Any]:
    """Versions and platform recorded with every run."""
    return {
        "heterograd": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- trainer
@dataclass
class RunResult:
    """Outcome of :meth:`Trainer.fit`: the summary, the logged rows and the trained circuit."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    circuit: Circuit
    out_dir: Path | None


class Trainer:
    """Runs a :class:`TrainConfig`: builds data, circuit, rule and motif, then trains.

    Args:
        config: the run's configuration (validated here).
        dataset: optionally a preloaded :class:`Dataset` (else ``load_dataset(config.data)``).
    """

    def __init__(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        self.config = config.validate()
        c = self.config
        self.dtype = DTYPES[c.dtype]
        self.device = torch.device(c.device)
        ds = dataset if dataset is not None else load_dataset(c.data, seed=c.seed, n_train=c.n_train, n_test=c.n_test)
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
            density=c.density,
            feedback_init=c.feedback_init,
            seed=c.seed,
            dtype=self.dtype,
            device=self.device,
        )
        self.rule = make_rule(
            c.rule, weight_decay=c.weight_decay, feedback_gain=c.feedback_gain, theta_w=c.theta_w, theta_b=c.theta_b
        )
        self.motif: Motif = make_motif(c.optimizer, lr=c.lr, **c.optimizer_options)
        self.rule_state = self.rule.init(self.circuit)
        self.motif_state = self.motif.init(self.circuit.plastic_tensors())
        self.generator = torch.Generator().manual_seed(c.seed)
        n = self.data.x_train.shape[0]
        self.steps_per_epoch = max(1, n // c.batch_size) if n >= c.batch_size else 1
        self.log_every = c.log_every or max(1, self.steps_per_epoch // 4)
        k = min(c.probe_size, n)
        self.probe_x, self.probe_y = self.data.x_train[:k], self.data.y_train[:k]
        self.step_count = 0
        self.rows: list[dict[str, Any]] = []

    # ..................................................................... steps
    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One local learning step on a batch; returns the batch loss before the update (0-d)."""
        out = local_step(self.circuit, self.rule, self.rule_state, self.loss, x, y)
        self.rule_state = out.rule_state
        steps, self.motif_state = self.motif.update(out.deltas.flat(), self.motif_state, self.circuit.plastic_tensors())
        apply_steps(self.circuit, steps)
        self.step_count += 1
        return out.loss

    def probe(self) -> dict[str, float]:
        """Probes on the fixed probe batch (first ``probe_size`` training samples), nothing applied."""
        with torch.no_grad():
            out = local_step(self.circuit, self.rule, self.rule_state, self.loss, self.probe_x, self.probe_y)
        return measure(self.circuit, self.probe_x, self.probe_y, self.loss, out.u, out.deltas, self.config.weight_decay)

    def weights_finite(self) -> bool:
        lim = self.config.divergence_threshold
        for t in self.circuit.plastic_tensors():
            m = float(t.detach().abs().max()) if t.numel() else 0.0
            if not math.isfinite(m) or m > lim:
                return False
        return True

    # ..................................................................... loop
    def fit(
        self,
        out_dir: str | Path | None = None,
        *,
        progress: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Train for ``config.epochs`` epochs; write the run directory if ``out_dir`` is given.

        A diverging run (non-finite loss, or weights beyond ``divergence_threshold``) stops at the
        logged step where it is detected, keeps everything written so far and reports
        ``diverged: true`` in the summary; it is a result, not an exception.
        """
        from tqdm.auto import tqdm

        c = self.config
        out = prepare_out_dir(out_dir) if out_dir is not None else None
        if out is not None:
            write_json(
                out / "config.json",
                {**c.to_dict(), "environment": environment(), "rule_equation": self.rule.describe()},
            )
        start = time.perf_counter()
        diverged, diverged_step = False, None
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        n_acc = 0
        total_steps = c.epochs * self.steps_per_epoch
        bar = tqdm(
            total=total_steps,
            disable=not progress,
            desc=f"{c.rule} on {c.data}",
            unit="step",
            leave=False,
            file=sys.stderr,
        )
        last_train_loss = math.nan
        try:
            for epoch in range(c.epochs):
                batches = iterate_minibatches(
                    self.data.x_train,
                    self.data.y_train,
                    c.batch_size,
                    generator=self.generator,
                    drop_last=self.data.x_train.shape[0] >= c.batch_size,
                )
                for i, (xb, yb) in enumerate(batches):
                    loss_acc += self.train_step(xb, yb).double()
                    n_acc += 1
                    end_of_epoch = i == self.steps_per_epoch - 1
                    if self.step_count % self.log_every == 0 or end_of_epoch:
                        last_train_loss = float(loss_acc) / n_acc
                        loss_acc.zero_()
                        n_acc = 0
                        row: dict[str, Any] = {
                            "step": self.step_count,
                            "epoch": round(epoch + (i + 1) / self.steps_per_epoch, 4),
                            "train_loss": last_train_loss,
                        }
                        bad = not math.isfinite(last_train_loss) or not self.weights_finite()
                        if not bad and c.probes:
                            row.update(self.probe())
                        if end_of_epoch and not bad:
                            tl, ta = evaluate(self.circuit, self.loss, self.data.x_test, self.data.y_test)
                            row["test_loss"] = tl
                            row["test_accuracy"] = ta
                        self.rows.append(row)
                        bar.set_postfix(loss=f"{last_train_loss:.4g}")
                        if on_log is not None:
                            on_log(row)
                        if out is not None:
                            write_csv(out / "metrics.csv", self.rows)
                        if bad:
                            diverged, diverged_step = True, self.step_count
                            break
                    bar.update(1)
                if diverged:
                    break
        finally:
            bar.close()
            wall = time.perf_counter() - start
            if out is not None and self.rows:
                write_csv(out / "metrics.csv", self.rows)
        summary = self._summary(diverged, diverged_step, last_train_loss, wall)
        if out is not None:
            write_json(out / "summary.json", summary)
            from .plots import plot_run

            plot_run(self.rows, out, title=f"{c.rule} on {c.data} (seed {c.seed})")
        return RunResult(summary, self.rows, self.circuit, out)

    def _summary(self, diverged: bool, diverged_step: int | None, train_loss: float, wall: float) -> dict[str, Any]:
        c = self.config
        hidden = self.circuit.hidden_layers
        if diverged:
            test_loss, test_acc = math.nan, None
            probes: dict[str, float] = {}
        else:
            test_loss, test_acc = evaluate(self.circuit, self.loss, self.data.x_test, self.data.y_test)
            probes = self.probe()
        return {
            "data": c.data,
            "rule": c.rule,
            "seed": c.seed,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "final_train_loss": train_loss,
            "diverged": diverged,
            "diverged_step": diverged_step,
            "phi": [probes.get(f"phi_{l}", math.nan) for l in hidden],
            "align": [probes.get(f"align_{l}", math.nan) for l in hidden],
            "dc_score": probes.get("dc_score", math.nan),
            "steps": self.step_count,
            "wall_seconds": round(wall, 3),
            "device": str(self.device),
        }


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
