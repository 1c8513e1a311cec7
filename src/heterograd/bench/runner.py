"""Speed and memory of a heterosynaptic training step next to autograd baselines, measured side by side.

One run times, round-robin and repeated (median over rounds), full training steps (forward, teaching
signal, feedback, deltas, weight update) of:

* ``hsp``, ``fa``, ``poly`` (and ``hsp-sparse``: sparse feedback at density 0.2): heterograd's own step,
  exactly what `heterograd.train.Trainer.train_step` does (``local_step`` -> SGD motif -> ``apply_steps``;
  for ``hsp`` `heterograd.train.layerwise_sgd_step`, the same update with each layer's deltas applied
  as soon as they exist);
* ``bp-autograd``: a plain PyTorch MLP (``nn.Sequential`` of ``nn.Linear`` + ``tanh``,
  ``CrossEntropyLoss``, ``torch.optim.SGD``) of identical shapes, weights and weight decay;
* ``fa-autograd``: feedback alignment as autograd-based libraries implement it (biotorch style): a
  custom ``torch.autograd.Function`` whose backward sends the error through a fixed ``B``.

With ``models`` (e.g. ``lenet5``, ``resnet20`` of `heterograd.models`) the run times one training step
of that model instead, with ``torch.optim.SGD`` (momentum) and ``CrossEntropyLoss``:

* ``bp-autograd``: the plain model trained by autograd (weight decay in the optimiser);
* ``bp``, ``hsp``, ``kp``, ``fa``, ``usf`` (any rule of `MODEL_IMPLS`): the same model, same initial
  weights, converted by `heterograd.nn.convert.convert` (weight decay in the rule, as the converted
  layers compute it; ``λW`` + momentum is the same update as the optimiser's ``weight_decay``);
* ``hsp-fused`` and ``bp-autograd-fused``: the optimiser step runs inside the backward sweep, one parameter
  at a time as soon as its ``.grad`` is complete (a post-accumulate-grad hook with a per-parameter SGD), so
  the gradients of all layers are never alive at once (see `fuse_optimizer`).

Every case uses the same random batch (``x ~ N(0, 1)``, random labels) at every step, so the times are
the step's own cost with no data loading. Optional variants: ``bfloat16`` compute and ``torch.compile``
(heterograd compiles its pure local step; the baseline compiles its model); for ``models``, bfloat16
``torch.autocast`` (float32 weights, ``autocast``) and ``torch.compile`` of the model (converted or not) for
`MODEL_VARIANT_IMPLS`.

Peak memory of a step, reported as bytes allocated above what was live when the step started
(parameters and the batch are excluded; activations, gradients/deltas and temporaries are included):
on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation at step start; on CPU the running total
of the allocator's alloc/free events recorded by ``torch.profiler`` (``profile_memory=True``) over one
step, whose maximum is the peak. The autograd baselines free their gradients at the end of each step
(``zero_grad(set_to_none=True)``), so their peak includes the gradients, as ours includes the deltas.

Total memory of a training step adds what stays resident between steps to that peak (`resident_bytes`,
measured after the warm-up steps): the parameters and buffers (``W``, ``b``, ``B`` whether a parameter or a
frozen buffer, BatchNorm statistics) and the optimiser's state (momentum buffers, ``B``'s included; a circuit's
rule and motif state). ``total_bytes = resident_bytes + peak_bytes``; ``total_memory_ratio_to_bp`` beside the
step-peak ratio ``memory_ratio_to_bp`` shows what a plastic ``B`` and its optimiser state cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..circuits import Circuit
from ..errors import HeterogradError
from ..losses import get_loss
from ..models import MODELS, make_model
from ..nn.convert import convert
from ..optim import make_motif
from ..results import write_json
from ..rules import make_rule
from ..runtime import DTYPES, resolve_device
from ..train import apply_steps, compile_local_step, layerwise_sgd_step, local_step

IMPLS: tuple[str, ...] = ("bp-autograd", "fa-autograd", "hsp", "fa", "poly", "hsp-sparse")
"""Implementations a benchmark can time (see the module docstring)."""
BASELINE = "bp-autograd"
VARIANT_IMPLS: tuple[str, ...] = ("bp-autograd", "hsp")
"""Implementations also timed in the extra dtypes and compiled."""
DEFAULT_SIZES: tuple[tuple[tuple[int, ...], int], ...] = (((784, 1024, 1024, 10), 128), ((64, 128, 128, 10), 32))
QUICK_SIZES: tuple[tuple[tuple[int, ...], int], ...] = (((16, 32, 32, 4), 8),)
SPARSE_DENSITY = 0.2
MODEL_IMPLS: tuple[str, ...] = ("bp-autograd", "bp", "hsp", "kp", "fa", "usf")
"""Implementations a model benchmark (``models``) can time; ``hsp-fused`` also (see the module docstring)."""
EXTRA_MODEL_IMPLS: tuple[str, ...] = ("hsp-fused", "bp-autograd-fused", "dfa", "brsf", "frsf")
MODEL_VARIANT_IMPLS: tuple[str, ...] = ("bp-autograd", "kp", "hsp")
"""Model implementations also timed under bfloat16 autocast (``autocast``) and ``torch.compile`` (``compile``)."""
DEFAULT_MODELS: tuple[str, ...] = ("lenet5", "resnet20")
MODEL_TIME_TARGET = 1.05
MODEL_MEMORY_TARGET = 1.1


@dataclass
class BenchConfig:
    """What one benchmark run measures.

    Attributes:
        sizes: ``((n_0, ..., n_L), batch)`` pairs.
        impls: implementations, a subset of `IMPLS` (``bp-autograd`` is always added: ratios need it).
        dtypes: compute dtypes; the first is the main one (all impls), the others time `VARIANT_IMPLS`.
        compile: also time `VARIANT_IMPLS` (models: `MODEL_VARIANT_IMPLS`) under ``torch.compile``
            (main dtype).
        autocast: models only: also time `MODEL_VARIANT_IMPLS` under ``torch.autocast`` to bfloat16 (the
            main dtype must be float32: weights stay float32).
        repeats: round-robin rounds; each case's time is the median over rounds.
        block_seconds: target duration of one timed block (steps per block are calibrated to it).
        max_seconds: time budget of the timed rounds; rounds stop early (at least 3) once it is spent.
        warmup_steps: untimed steps per case before calibration.
        min_block_steps: at least this many steps per timed block: on a loaded machine ``block_seconds`` alone
            shrinks blocks to one step, whose times scatter far more than the ratio being measured.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is).
        lr, weight_decay: SGD learning rate and weight decay λ (same for every implementation).
        memory: measure each case's peak step memory.
        models: registered model names (`heterograd.models.MODELS`); when given, the run times one
            training step of each model (``sizes`` must then be empty; ``impls`` from `MODEL_IMPLS`).
        input_shape: one input's shape for ``models`` (default Fashion-MNIST's ``(1, 28, 28)``).
        batch: batch size of ``models``' step.
        num_classes: outputs of ``models``.
        momentum: SGD momentum of ``models``' optimiser (the dense MLP cases use plain SGD).
    """

    sizes: tuple[tuple[tuple[int, ...], int], ...] = DEFAULT_SIZES
    impls: tuple[str, ...] = IMPLS
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    compile: bool = False
    autocast: bool = False
    repeats: int = 21
    block_seconds: float = 0.04
    max_seconds: float = 120.0
    warmup_steps: int = 3
    min_block_steps: int = 5
    device: str = "cpu"
    threads: int | None = None
    lr: float = 0.01
    weight_decay: float = 1e-4
    seed: int = 0
    memory: bool = True
    models: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = (1, 28, 28)
    batch: int = 128
    num_classes: int = 10
    momentum: float = 0.9
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke-test configuration that runs in a few seconds."""
        base = dict(
            sizes=QUICK_SIZES, dtypes=("float32",), repeats=3, block_seconds=0.005, warmup_steps=1, min_block_steps=1
        )
        return cls(**{**base, **overrides})

    @classmethod
    def for_models(cls, models: Sequence[str] = DEFAULT_MODELS, quick: bool = False, **overrides: Any) -> BenchConfig:
        """A model benchmark: ``models`` under `MODEL_IMPLS` (quick: batch 8, a few seconds)."""
        base: dict[str, Any] = dict(models=tuple(models), sizes=(), impls=MODEL_IMPLS, dtypes=("float32",))
        if quick:
            base.update(batch=8, repeats=3, block_seconds=0.005, warmup_steps=1, min_block_steps=1)
        return cls(**{**base, **overrides})

    def validate(self) -> BenchConfig:
        valid = MODEL_IMPLS + EXTRA_MODEL_IMPLS if self.models else IMPLS
        bad = [i for i in self.impls if i not in valid]
        if bad:
            what = "a model benchmark (--models)" if self.models else "the MLP benchmark (--sizes)"
            raise HeterogradError(f"implementation(s) {bad} do not apply to {what}; valid choices: {', '.join(valid)}")
        if self.models:
            self.models = tuple(self.models)
            unknown = [m for m in self.models if m.lower() not in MODELS]
            if unknown:
                raise HeterogradError(f"unknown model(s) {unknown}; valid choices: {', '.join(MODELS)}")
            if self.sizes:
                raise HeterogradError("give either --models or --sizes to one benchmark run, not both")
            if len(self.dtypes) != 1:
                raise HeterogradError(
                    "a model benchmark (--models) times one dtype (use autocast for bfloat16); drop the extra dtypes"
                )
            if self.autocast and self.dtypes[0] != "float32":
                raise HeterogradError(f"bfloat16 autocast runs a float32 model; drop dtype {self.dtypes[0]}")
            self.input_shape = tuple(int(v) for v in self.input_shape)
            if not self.input_shape or min(self.input_shape) < 1 or self.batch < 1 or self.num_classes < 2:
                raise HeterogradError(
                    f"bad model input {self.input_shape} @ batch {self.batch} with {self.num_classes} classes; "
                    "e.g. --input-shape 1,28,28 --batch 128"
                )
            if not 0.0 <= self.momentum < 1.0:
                raise HeterogradError(f"--momentum must be in [0, 1), got {self.momentum}")
        elif not self.sizes:
            raise HeterogradError("nothing to benchmark: give --sizes (MLP) or --models")
        elif self.autocast:
            raise HeterogradError("autocast applies to a model benchmark (--models); the MLP cases take --dtypes")
        if BASELINE not in self.impls:
            self.impls = (BASELINE, *self.impls)
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad or not self.dtypes:
            raise HeterogradError(f"unknown dtype(s) {bad or self.dtypes}; valid choices: {', '.join(DTYPES)}")
        if self.repeats < 1 or self.warmup_steps < 1 or self.min_block_steps < 1 or not self.block_seconds > 0:
            raise HeterogradError("--repeats, warmup and block steps must be >= 1 and the block time > 0")
        for sizes, batch in self.sizes:
            if len(sizes) < 2 or min(sizes) < 1 or batch < 1:
                raise HeterogradError(f"bad benchmark size {sizes} at batch {batch}; e.g. 784,1024,1024,10@128")
        if self.threads is not None and self.threads < 1:
            raise HeterogradError(f"--threads must be >= 1, got {self.threads}")
        self.device = resolve_device(self.device)
        return self


@dataclass(frozen=True)
class Case:
    """One timed configuration: an implementation at one size, dtype and compile setting."""

    impl: str
    sizes: tuple[int, ...]
    batch: int
    dtype: str
    compiled: bool
    model: str | None = None
    amp: bool = False

    @property
    def label(self) -> str:
        return self.impl + ("+autocast" if self.amp else "") + ("+compile" if self.compiled else "")

    @property
    def shape(self) -> str:
        if self.model is not None:  # sizes = one input's shape
            return f"{self.model} {'x'.join(map(str, self.sizes))} @ {self.batch}"
        return f"{'-'.join(map(str, self.sizes))} @ {self.batch}"


# --------------------------------------------------------------------------- baselines (autograd allowed here)
class _FALinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b``; backward sends the error through a fixed ``B_w`` ``(out, in)`` instead of ``W``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, weight_backward: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight_backward)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight_backward = ctx.saved_tensors
        grad_x = grad_out.mm(weight_backward) if ctx.needs_input_grad[0] else None
        return grad_x, grad_out.t().mm(x), grad_out.sum(0), None


class FALinear(nn.Linear):
    """Feedback-alignment linear layer as in biotorch: ``weight_backward`` ``(out, in)`` is a fixed buffer."""

    def __init__(self, in_features: int, out_features: int, weight_backward: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("weight_backward", weight_backward.detach().clone().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return _FALinearFunction.apply(x, self.weight, self.bias, self.weight_backward)


def autograd_mlp(circuit: Circuit, feedback_alignment: bool = False) -> nn.Sequential:
    """``nn.Sequential`` of ``nn.Linear`` (or `FALinear`, ``B_w = Bᵀ``) + ``tanh`` with ``circuit``'s weights."""
    layers: list[nn.Module] = []
    L = circuit.depth
    Bs = {e.src: circuit.B[k] for k, e in enumerate(circuit.edges) if e.adjacent}
    for l in range(1, L + 1):
        n_in, n_out = circuit.sizes[l - 1], circuit.sizes[l]
        if feedback_alignment:
            B = Bs.get(l)
            wb = B.t() if B is not None else torch.zeros(n_out, n_in, dtype=circuit.W[0].dtype)
            lin: nn.Linear = FALinear(n_in, n_out, wb)
        else:
            lin = nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(circuit.W[l - 1])
            lin.bias.copy_(circuit.b[l - 1])
        layers.append(lin)
        if l < L:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(device=circuit.W[0].device, dtype=circuit.W[0].dtype)


# --------------------------------------------------------------------------- steps
def model_for(case: Case, cfg: BenchConfig) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """``case``'s model (same initial weights for every impl) and its SGD optimiser (``None`` for ``*-fused``).

    ``bp-autograd``: the plain model, weight decay in the optimiser; other impls: the model converted by
    that rule with the weight decay in the rule (the optimiser's ``weight_decay`` is 0).
    """
    assert case.model is not None
    model = make_model(case.model, case.sizes, cfg.num_classes, seed=cfg.seed)
    model = model.to(device=cfg.device, dtype=DTYPES[case.dtype])
    impl = case.impl.removesuffix("-fused")
    if impl == BASELINE:
        wd = cfg.weight_decay
    else:
        example = torch.zeros(1, *case.sizes, device=cfg.device, dtype=DTYPES[case.dtype]) if impl == "dfa" else None
        convert(model, impl, seed=cfg.seed, weight_decay=cfg.weight_decay, example_input=example)
        wd = 0.0

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)

    if case.impl.endswith("-fused"):
        model.fused_optimizers = fuse_optimizer(model, sgd)  # type: ignore[assignment]  # for resident_bytes
        return model, None
    return model, sgd(model.parameters())


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor inside ``obj`` (nested lists, tuples, dicts, dataclasses, NamedTuples, optimisers)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, torch.optim.Optimizer):
        return _tensors(list(obj.state.values()))
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    return []


def tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages inside ``obj`` (a tensor shared twice counts once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in _tensors(obj):
        if t.numel() == 0:
            continue
        st = t.untyped_storage()
        seen[(str(t.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


@dataclass
class Resident:
    """What stays allocated between two steps: ``parameters`` (parameters and buffers: ``W``, ``b``, ``B``,
    statistics) and ``optimizer_state`` (optimiser / motif / rule state), in bytes."""

    parameters: int
    optimizer_state: int

    @property
    def total(self) -> int:
        """``parameters + optimizer_state``."""
        return self.parameters + self.optimizer_state


def resident_bytes(step: Callable[[], None]) -> Resident | None:
    """The resident memory of a step made by `make_step` (``None`` for a callable it did not make)."""
    fn = getattr(step, "resident", None)
    return fn() if callable(fn) else None


def fuse_optimizer(
    model: nn.Module, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer]
) -> list[torch.optim.Optimizer]:
    """Step each parameter inside ``loss.backward()`` as soon as its ``.grad`` is complete, then free the grad.

    One optimiser per parameter (``make_optimizer([p])``), run by ``p``'s post-accumulate-grad hook: the
    update of a layer is applied while the sweep goes on below it, so the gradients of all layers are never
    alive at once and no separate ``optimizer.step()`` runs. The same update as ``make_optimizer`` on all
    parameters for per-parameter optimisers such as SGD (not for ones that couple parameters, e.g. LBFGS).
    Returns the per-parameter optimisers (their state is part of the step's resident memory).
    """
    opts: list[torch.optim.Optimizer] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        opt = make_optimizer([p])
        opts.append(opt)

        def hook(param: Tensor, opt: torch.optim.Optimizer = opt) -> None:
            opt.step()
            param.grad = None

        p.register_post_accumulate_grad_hook(hook)
    return opts


@dataclass
class ModelStep:
    """One training step of a model case (a zero-argument callable): forward, ``loss.backward()`` (the t'
    sweep), optimiser step, ``zero_grad(set_to_none=True)``; with ``optimizer=None`` (``*-fused``) the
    optimiser steps run inside the backward sweep. ``x`` ``(n, *input_shape)``, ``y`` ``(n,)`` labels. With ``amp``
    the forward runs under ``torch.autocast`` to bfloat16; ``forward`` (default: the model) may be compiled."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    x: Tensor
    y: Tensor
    loss: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    amp: bool = False
    forward: Callable[[Tensor], Tensor] | None = None

    def __call__(self) -> None:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = (self.forward or self.model)(self.x)
        self.loss(out.float(), self.y).backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def resident(self) -> Resident:
        """Parameters + buffers of the model and its optimiser state(s) (see `Resident`)."""
        opts = [self.optimizer] if self.optimizer is not None else getattr(self.model, "fused_optimizers", [])
        return Resident(tensor_bytes([*self.model.parameters(), *self.model.buffers()]), tensor_bytes(opts))


class _Step:
    """A step callable with its `Resident` accounting (for the MLP cases)."""

    def __init__(self, fn: Callable[[], None], resident: Callable[[], Resident]) -> None:
        self.fn, self.resident = fn, resident

    def __call__(self) -> None:
        self.fn()


def make_model_step(case: Case, cfg: BenchConfig, x: Tensor, y: Tensor) -> ModelStep:
    """One training step of ``case.model`` on ``(x, y)`` (see `ModelStep` and `model_for`)."""
    model, opt = model_for(case, cfg)
    model.train()
    forward = torch.compile(model) if case.compiled else None
    return ModelStep(model, opt, x, y, amp=case.amp, forward=forward)


def make_step(case: Case, cfg: BenchConfig, x: Tensor, y: Tensor) -> Callable[[], None]:
    """A zero-argument callable doing one full training step of ``case`` on the batch ``(x, y)``."""
    if case.model is not None:
        return make_model_step(case, cfg, x, y)
    dtype = DTYPES[case.dtype]
    topology = "sparse" if case.impl == "hsp-sparse" else "layered"
    circuit = Circuit(
        case.sizes,
        "tanh",
        topology=topology,
        density=SPARSE_DENSITY if topology == "sparse" else 1.0,
        seed=cfg.seed,
        dtype=dtype,
        device=cfg.device,
    )
    if case.impl in ("bp-autograd", "fa-autograd"):
        model: nn.Module = autograd_mlp(circuit, feedback_alignment=case.impl == "fa-autograd")
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        forward = torch.compile(model) if case.compiled else model
        ce = nn.CrossEntropyLoss()

        def autograd_step() -> None:
            ce(forward(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return _Step(
            autograd_step, lambda: Resident(tensor_bytes([*model.parameters(), *model.buffers()]), tensor_bytes(opt))
        )
    rule = make_rule("hsp" if case.impl == "hsp-sparse" else case.impl, weight_decay=cfg.weight_decay)
    motif = make_motif("sgd", lr=cfg.lr)
    loss = get_loss("ce")
    step_fn = compile_local_step() if case.compiled else local_step
    state = [rule.init(circuit), motif.init(circuit.plastic_tensors())]

    def local_learning_step() -> None:  # = Trainer.train_step
        if not case.compiled:  # plain SGD with a layer-wise rule: each delta applied as soon as it exists
            done = layerwise_sgd_step(circuit, rule, state[0], motif, state[1], loss, x, y)
            if done is not None:
                state[1] = done[1]
                return
        out = step_fn(circuit, rule, state[0], loss, x, y)
        state[0] = out.rule_state
        steps, state[1] = motif.update(out.deltas.flat(), state[1], circuit.plastic_tensors())
        apply_steps(circuit, steps)

    return _Step(local_learning_step, lambda: Resident(tensor_bytes(circuit.plastic_tensors()), tensor_bytes(state)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one call of ``step`` above the bytes live when it started (see module doc)."""
    if device.type == "cuda":
        _sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text(encoding="utf-8"))["traceEvents"]
    totals = [
        int(e["args"]["Total Allocated"])
        for e in events
        if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})
    ]
    return max([0, *totals])


def _cases(cfg: BenchConfig) -> list[Case]:
    cases = []
    main = cfg.dtypes[0]
    for name in cfg.models:
        shape, m = tuple(cfg.input_shape), name.lower()
        cases += [Case(i, shape, cfg.batch, main, False, m) for i in cfg.impls]
        variants = [i for i in MODEL_VARIANT_IMPLS if i in cfg.impls]
        if cfg.autocast:
            cases += [Case(i, shape, cfg.batch, main, False, m, amp=True) for i in variants]
        if cfg.compile:
            cases += [Case(i, shape, cfg.batch, main, True, m) for i in variants]
    for sizes, batch in cfg.sizes:
        sz = tuple(int(s) for s in sizes)
        cases += [Case(i, sz, batch, main, False) for i in cfg.impls]
        cases += [Case(i, sz, batch, d, False) for d in cfg.dtypes[1:] for i in VARIANT_IMPLS if i in cfg.impls]
        if cfg.compile:
            cases += [Case(i, sz, batch, main, True) for i in VARIANT_IMPLS if i in cfg.impls]
    return cases


def environment(cfg: BenchConfig) -> dict[str, Any]:
    """Machine facts recorded with the results."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env: dict[str, Any] = {
        "heterograd": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": cfg.device,
        # glibc allocator tuning (e.g. MALLOC_TRIM_THRESHOLD_) changes page faults, so it is part of the result
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    if cfg.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(cfg.device))
    return env


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (``None`` where ``resource`` is unavailable)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every case interleaved (round-robin, ``repeats`` rounds, median), measure memory; return the results.

    The result dict has ``config``, ``environment``, ``results`` (one row per case) and ``targets``.
    """
    cfg.validate()
    say = progress or (lambda _msg: None)
    with torch_threads(cfg.threads):
        return _run(cfg, say)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (``None``: leave it), the old count restored after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run(cfg: BenchConfig, say: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device(cfg.device)
    load_start = _loadavg()
    t_start = time.perf_counter()
    cases = _cases(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    batches: dict[tuple[tuple[int, ...], int, str], tuple[Tensor, Tensor]] = {}
    steps: dict[Case, Callable[[], None]] = {}
    setup: dict[Case, float] = {}
    for case in cases:
        key = (case.sizes, case.batch, case.dtype)
        if key not in batches:
            x_shape = (case.batch, *case.sizes) if case.model is not None else (case.batch, case.sizes[0])
            n_classes = cfg.num_classes if case.model is not None else case.sizes[-1]
            x = torch.randn(x_shape, generator=g).to(device=device, dtype=DTYPES[case.dtype])
            y = torch.randint(0, n_classes, (case.batch,), generator=g).to(device)
            batches[key] = (x, y)
        say(f"setting up {case.label} {case.dtype} {case.shape}")
        step = make_step(case, cfg, *batches[key])
        t0 = time.perf_counter()
        for _ in range(cfg.warmup_steps):  # the first call compiles when case.compiled
            step()
        _sync(device)
        setup[case] = time.perf_counter() - t0
        steps[case] = step
    # calibrate steps per block: as many steps as fit in block_seconds (at least one)
    per_block: dict[Case, int] = {}
    for case, step in steps.items():
        n, t0 = 0, time.perf_counter()
        while n < 10_000 and (n < cfg.min_block_steps or time.perf_counter() - t0 < cfg.block_seconds):
            step()
            _sync(device)
            n += 1
        per_block[case] = n
    times: dict[Case, list[float]] = {c: [] for c in cases}
    faults: dict[Case, list[float]] = {c: [] for c in cases}
    t_rounds = time.perf_counter()
    for r in range(cfg.repeats):
        if r >= 3 and time.perf_counter() - t_rounds > cfg.max_seconds:
            cfg.notes.append(f"stopped after {r} of {cfg.repeats} rounds: time budget of {cfg.max_seconds} s spent")
            break
        if r % 5 == 0 or r == cfg.repeats - 1:  # a few lines, not one per round
            say(f"round {r + 1}/{cfg.repeats}")
        k = r % len(cases)
        for case in cases[k:] + cases[:k]:  # round-robin, rotated so no case always runs first
            step, n = steps[case], per_block[case]
            _sync(device)
            f0, t0 = _minor_faults(), time.perf_counter()
            for _ in range(n):
                step()
            _sync(device)
            times[case].append((time.perf_counter() - t0) / n)
            f1 = _minor_faults()
            if f0 is not None and f1 is not None:
                faults[case].append((f1 - f0) / n)
    memory: dict[Case, int | None] = {}
    resident: dict[Case, Resident | None] = {}
    for case in cases:
        memory[case] = peak_step_memory(steps[case], device) if cfg.memory else None
        resident[case] = resident_bytes(steps[case]) if cfg.memory else None
    rows = _rows(cfg, cases, times, per_block, setup, memory, resident)
    for row, case in zip(rows, cases, strict=True):
        row["minor_faults_per_step"] = round(statistics.median(faults[case])) if faults[case] else None
    method = (
        "torch.cuda.max_memory_allocated during one step minus memory_allocated at its start"
        if device.type == "cuda"
        else "torch.profiler(profile_memory=True): max running total of allocator events during one step"
    )
    return {
        "config": {
            **dataclasses.asdict(cfg),
            "sizes": [[list(s), b] for s, b in cfg.sizes],
            "input_shape": list(cfg.input_shape),
        },
        "environment": {**environment(cfg), "loadavg_start": load_start, "loadavg_end": _loadavg()},
        "memory_method": method,
        "timing_method": (
            f"median over {len(times[cases[0]])} round-robin rounds of the mean step time in a block of steps "
            f"(~{cfg.block_seconds}s per block); all cases interleaved in one process; ratios are medians over "
            "rounds of the per-round ratio to bp-autograd (paired, robust to load drifting between rounds)"
        ),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "results": rows,
        "targets": targets(rows),
    }


def _rows(
    cfg: BenchConfig,
    cases: Sequence[Case],
    times: dict[Case, list[float]],
    per_block: dict[Case, int],
    setup: dict[Case, float],
    memory: dict[Case, int | None],
    resident: dict[Case, Resident | None] | None = None,
) -> list[dict[str, Any]]:
    med = {c: statistics.median(times[c]) for c in cases}
    base = {(c.model, c.sizes, c.batch, c.dtype, c.compiled, c.amp): c for c in cases if c.impl == BASELINE}
    rows = []
    for c in cases:
        ref = base.get((c.model, c.sizes, c.batch, c.dtype, c.compiled, c.amp)) or base.get(
            (c.model, c.sizes, c.batch, cfg.dtypes[0], False, False)
        )
        ts = sorted(times[c])
        q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
        mem, ref_mem = memory[c], memory[ref] if ref is not None else None
        res = (resident or {}).get(c)
        ref_res = (resident or {}).get(ref) if ref is not None else None
        total = mem + res.total if mem is not None and res is not None else None
        ref_total = ref_mem + ref_res.total if ref_mem is not None and ref_res is not None else None
        rows.append(
            {
                "impl": c.impl,
                "label": c.label,
                "model": c.model,
                "sizes": list(c.sizes),
                "batch": c.batch,
                "shape": c.shape,
                "dtype": c.dtype,
                "compiled": c.compiled,
                "autocast": "bfloat16" if c.amp else None,
                "median_ms": med[c] * 1e3,
                "q1_ms": q1 * 1e3,
                "q3_ms": q3 * 1e3,
                "steps_per_block": per_block[c],
                "setup_seconds": round(setup[c], 3),
                "baseline": ref.label + " " + ref.dtype if ref is not None else None,
                # paired: per round, this case's block and the baseline's block ran side by side
                "ratio_to_bp": (
                    statistics.median(a / b for a, b in zip(times[c], times[ref], strict=True))
                    if ref is not None
                    else math.nan
                ),
                "ratio_of_medians": med[c] / med[ref] if ref is not None else math.nan,
                "samples_per_s": c.batch / med[c],
                "peak_bytes": mem,
                "round_ms": [t * 1e3 for t in times[c]],
                "memory_ratio_to_bp": (mem / ref_mem) if mem is not None and ref_mem else None,
                "param_bytes": None if res is None else res.parameters,
                "optimizer_state_bytes": None if res is None else res.optimizer_state,
                "total_bytes": total,
                "total_memory_ratio_to_bp": (total / ref_total) if total is not None and ref_total else None,
            }
        )
    return rows


def _paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over rounds of ``a``'s step time over ``b``'s (rows of one run), or the ratio of their ratios."""
    if a.get("round_ms") and b.get("round_ms"):
        return statistics.median(x / y for x, y in zip(a["round_ms"], b["round_ms"], strict=True))
    return a["ratio_to_bp"] / b["ratio_to_bp"]


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's speed and memory targets, computed from the measured rows (main dtype).

    Eager ``hsp`` against eager baselines; if compiled rows exist, also ``hsp+compile`` against the eager ones.
    Model rows (``models``): ``hsp`` and ``kp`` step time <= 1.05x and peak step memory <= 1.1x ``bp-autograd``
    (the ``*-fused`` rows are reported, not checked: they change the baseline's loop as well).
    """
    main = rows[0]["dtype"] if rows else "float32"
    by = {(r["shape"], r["impl"], r["compiled"]): r for r in rows if r["dtype"] == main and not r.get("autocast")}
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        bp, fa = by.get((shape, "bp-autograd", False)), by.get((shape, "fa-autograd", False))
        if bp is None:
            continue
        checks = []
        if bp.get("model") is not None:
            for impl in ("hsp", "kp"):
                r = by.get((shape, impl, False))
                if r is None:
                    continue
                checks.append((f"{impl} step time / bp-autograd", _paired(r, bp), MODEL_TIME_TARGET))
                if r["peak_bytes"] is not None and bp["peak_bytes"]:
                    mem = r["peak_bytes"] / bp["peak_bytes"]
                    checks.append((f"{impl} peak step memory / bp-autograd", mem, MODEL_MEMORY_TARGET))
            bp = None  # the MLP targets below do not apply to a model
        for compiled in (False, True) if bp is not None else ():
            hsp = by.get((shape, "hsp", compiled))
            if hsp is None:
                continue
            name = "hsp+compile" if compiled else "hsp"
            checks.append((f"{name} step time / bp-autograd", _paired(hsp, bp), 1.0))
            if fa is not None:
                checks.append((f"{name} step time / fa-autograd", _paired(hsp, fa), 0.8))
            if hsp["peak_bytes"] is not None and bp["peak_bytes"]:
                checks.append((f"{name} peak step memory / bp-autograd", hsp["peak_bytes"] / bp["peak_bytes"], 1.0))
        for claim, measured, threshold in checks:
            out.append(
                {
                    "shape": shape,
                    "claim": f"{claim} <= {threshold}",
                    "measured": round(measured, 3),
                    "threshold": threshold,
                    "holds": bool(measured <= threshold),
                }
            )
    return out


def _faults(row: dict[str, Any]) -> str:
    f = row.get("minor_faults_per_step")
    return "-" if f is None else f"{f:,}"


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown table plus the target checks and the method."""
    env = result["environment"]
    lines = [
        f"Training-step benchmark: heterograd {env['heterograd']}, torch {env['torch']}, {env['device']} "
        f"({env.get('gpu') or env['cpu']}, {env['torch_threads']} threads); load average "
        f"{env['loadavg_start']} -> {env['loadavg_end']} (other processes may have been running)"
        + (
            "; allocator: " + " ".join(f"{k}={v}" for k, v in env["malloc_env"].items()) + "."
            if env.get("malloc_env")
            else "; default allocator settings."
        ),
        "",
        "| case (size or model @ batch) | implementation | dtype | step ms (median) | × bp-autograd | samples/s "
        "| peak step MiB | mem × bp | total MiB | total × bp | page faults / step |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        dtype = r["dtype"] + (" → bf16" if r.get("autocast") else "")
        lines.append(
            f"| {r['shape']} | {r['label']} | {dtype} | {r['median_ms']:.3f} | {r['ratio_to_bp']:.2f} "
            f"| {r['samples_per_s']:,.0f} | {_mib(r.get('peak_bytes'))} | {_ratio(r.get('memory_ratio_to_bp'))} "
            f"| {_mib(r.get('total_bytes'))} | {_ratio(r.get('total_memory_ratio_to_bp'))} | {_faults(r)} |"
        )
    cfg = result.get("config", {})
    if cfg.get("models"):
        lines += [
            "",
            f"Model step: forward, `CrossEntropyLoss`, `loss.backward()`, `torch.optim.SGD` (lr {cfg['lr']}, "
            f"momentum {cfg['momentum']}, weight decay {cfg['weight_decay']}: in the optimiser for bp-autograd, in "
            "the rule for converted models), `zero_grad(set_to_none=True)`; one random batch of shape "
            f"{cfg['batch']}x{'x'.join(map(str, cfg['input_shape']))}, {cfg['num_classes']} classes; same initial "
            "weights for every implementation. `*-fused`: the optimiser step runs inside the backward sweep.",
        ]
    lines += ["", "| case | target | measured | holds |", "|---|---|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['shape']} | {t['claim']} | {t['measured']:.3f} | {'yes' if t['holds'] else 'NO'} |")
    notes = result.get("config", {}).get("notes") or []
    lines += [""] + [f"Note: {n}." for n in notes] if notes else []
    lines += [
        "",
        f"Timing: {result['timing_method']}. Memory: {result['memory_method']}; bytes above those live at step "
        "start (parameters and batch excluded). "
        + (
            "Total: that peak plus the memory resident between steps (parameters and buffers, `B` included, and "
            "the optimiser's state, e.g. momentum of `W` and `B`). "
            if any(r.get("total_bytes") is not None for r in result["results"])
            else "Total memory (parameters + optimiser state + peak) was not measured by this run ("
            + ("--no-memory" if result.get("config", {}).get("memory") is False else "it predates the column")
            + "). "
        )
        + "Ratios compare with bp-autograd at the same size and dtype "
        "(compiled rows with compiled bp-autograd, autocast rows with autocast bp-autograd). Page faults: the "
        "process's minor page faults per step (median over the timed blocks; memory the allocator returned to the "
        "system and touches again).",
    ]
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out_dir: str | Path, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"{stem}.json", out / f"{stem}.md"
    write_json(jp, result)
    mp.write_text(markdown(result), encoding="utf-8")
    return jp, mp


def parse_sizes_arg(text: str) -> tuple[tuple[tuple[int, ...], int], ...]:
    """``"784,1024,1024,10@128;64,128,128,10@32"`` -> ``(((784, 1024, 1024, 10), 128), ...)``."""
    out = []
    for part in text.split(";"):
        try:
            sizes, batch = part.strip().split("@")
            out.append((tuple(int(s) for s in sizes.split(",")), int(batch)))
        except ValueError:
            raise HeterogradError(
                f"--sizes {text!r}: write widths@batch separated by ';', e.g. 784,1024,1024,10@128;64,128,128,10@32"
            ) from None
    return tuple(out)
