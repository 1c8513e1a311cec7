"""Checkpoints of a training run: save atomically, load safely, check compatibility.

A checkpoint is one file, ``<run dir>/checkpoint.pt``, holding a plain dictionary
of tensors, numbers, strings, lists and dicts (nothing else), so it loads with
``torch.load(weights_only=True)`` and can never execute code::

    {
      "format": "heterograd-checkpoint", "version": 1,
      "config": {...},                  # TrainConfig.to_dict() of the run
      "circuit": {name: Tensor},        # Circuit.state_dict() (W, b, B and masks)
      "rule_state": ..., "motif_state": ...,
      "generator": ByteTensor,          # shuffling generator state at the start of `epoch`
      "epoch": int, "batch": int,       # position: next batch `batch` of epoch `epoch`
      "step": int, "rows": [dict, ...], # steps done and the metrics rows so far
      "loss_sum": float, "loss_count": int, "last_train_loss": float,
      "data_fingerprint": [...], "wall_seconds": float, "versions": {...},
      "digest": str,                    # SHA-256 of everything above, checked on load
    }

It is written to a temporary sibling and moved into place with ``os.replace``,
so a run killed at any moment leaves the previous complete checkpoint or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import HeterogradError
from .results import atomic_open

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "heterograd-checkpoint"
VERSION = 1
#: Keys every checkpoint must hold.
REQUIRED_KEYS: tuple[str, ...] = (
    "format",
    "version",
    "config",
    "circuit",
    "rule_state",
    "motif_state",
    "generator",
    "epoch",
    "batch",
    "step",
    "rows",
    "loss_sum",
    "loss_count",
    "last_train_loss",
    "data_fingerprint",
)
#: Config fields that may differ when a run is resumed (they do not change the trajectory).
RESUMABLE_FIELDS: frozenset[str] = frozenset({"epochs", "checkpoint_every"})


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoint.pt`` (or ``run_dir`` itself when it names a file)."""
    p = Path(run_dir)
    return p if p.suffix == ".pt" else p / CHECKPOINT_NAME


def plain(obj: Any, where: str = "state") -> Any:
    """A copy of ``obj`` that ``torch.load(weights_only=True)`` accepts, or a `HeterogradError`.

    Allowed: tensors, ``torch.Size``, bool/int/float/str/None (subclasses such as numpy floats or
    ``torch.__version__`` are converted to the plain type), and lists, tuples and dicts of them
    (dict keys: str or int).
    """
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, Tensor | torch.Size):
        return obj
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, list | tuple):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise HeterogradError(
                    f"cannot checkpoint {where}: key {k!r} is a {type(k).__name__}; "
                    "use str or int keys in rule/motif state"
                )
            out[plain(k)] = plain(v, f"{where}[{k!r}]")
        return out
    raise HeterogradError(
        f"cannot checkpoint {where}: a {type(obj).__name__} is not storable safely; keep rule and motif state "
        "to tensors, numbers, strings and lists/dicts of them"
    )


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Atomically write ``payload`` (made plain with `plain`) to ``path``; returns the path."""
    path = Path(path)
    data = plain({"format": FORMAT, "version": VERSION, **payload}, "checkpoint")
    data.pop("digest", None)
    data["digest"] = digest(data)
    with atomic_open(path, "wb") as f:
        torch.save(data, f)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (tensors on CPU) and check its layout.

    Accepts the checkpoint file or the run folder that holds ``checkpoint.pt``.

    Raises:
        HeterogradError: missing file, a file that is not a heterograd checkpoint (foreign, corrupt,
            truncated or holding code objects), or one written by an incompatible version.
    """
    p = checkpoint_path(path)
    if not p.exists():
        where = Path(path)
        if where.is_dir():
            raise HeterogradError(
                f"no {CHECKPOINT_NAME} in {where}; resume from a run folder written with --checkpoint-every "
                "(or interrupted), or start a new run"
            )
        raise HeterogradError(f"checkpoint {p} does not exist; pass the run folder that holds {CHECKPOINT_NAME}")
    if p.is_dir():
        raise HeterogradError(f"checkpoint path {p} is a folder; pass the run folder that holds {CHECKPOINT_NAME}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4" for foreign pickles
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln or "unsupported" in ln]
        first = (lines[0] if lines else " ".join(str(exc).split())) or type(exc).__name__
        raise HeterogradError(
            f"refusing to load {p}: it holds objects other than tensors and plain data ({first[:160]}); "
            "it is not a heterograd checkpoint or was tampered with, delete it and rerun"
        ) from None
    except Exception as exc:  # garbage makes the unpickler fail in many ways (IndexError, struct.error, ...)
        msg = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise HeterogradError(
            f"cannot read checkpoint {p} ({msg}); the file is corrupt or truncated, delete it and rerun"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HeterogradError(f"{p} is not a heterograd checkpoint; pass a run folder written by `heterograd train`")
    if data.get("version") != VERSION:
        raise HeterogradError(
            f"checkpoint {p} has format version {data.get('version')!r} but this heterograd reads version "
            f"{VERSION}; resume it with the heterograd that wrote it, or start a new run"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise HeterogradError(f"checkpoint {p} lacks {', '.join(missing)}; it is damaged, delete it and rerun")
    if not isinstance(data["config"], dict) or not isinstance(data["circuit"], dict):
        raise HeterogradError(f"checkpoint {p} has a malformed config or circuit; delete it and rerun")
    stored = data.pop("digest", None)
    if stored != digest(data):
        raise HeterogradError(
            f"checkpoint {p} fails its integrity check (its contents changed after it was written); "
            "delete it and rerun from an intact checkpoint"
        )
    return data


def digest(obj: Any) -> str:
    """SHA-256 over a plain payload: structure, exact scalars, tensor dtypes, shapes and bytes."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{o.dtype}{tuple(o.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}:".encode())
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, list | tuple):
            h.update(f"{'L' if isinstance(o, list) else 'U'}{len(o)}:".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Fields (not in `RESUMABLE_FIELDS`) whose values differ, as ``"lr: 0.05 -> 0.1"`` strings."""
    out = []
    for k in sorted(set(saved) | set(current)):
        if k in RESUMABLE_FIELDS:
            continue
        a, b = saved.get(k), current.get(k)
        if not _same(a, b):
            out.append(f"{k}: {a!r} in the checkpoint, {b!r} now")
    return out


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested lists/tuples/dicts to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def data_fingerprint(*tensors: Tensor) -> list[Any]:
    """A cheap identity of a dataset: shapes and float64 sums/weighted sums of its tensors."""
    out: list[Any] = []
    for t in tensors:
        d = t.detach().to("cpu", torch.float64).reshape(-1)
        w = torch.arange(1, d.numel() + 1, dtype=torch.float64).remainder_(97.0)
        out.append([list(t.shape), float(d.sum()), float((d * w).sum())])
    return out


__all__ = [
    "CHECKPOINT_NAME",
    "RESUMABLE_FIELDS",
    "checkpoint_path",
    "config_differences",
    "data_fingerprint",
    "load_checkpoint",
    "plain",
    "save_checkpoint",
    "to_device",
]
