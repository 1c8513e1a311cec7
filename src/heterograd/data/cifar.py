"""CIFAR-10 and CIFAR-100 from the standard files a user has on disk: ``cifar10:<dir>``, ``cifar100:<dir>``.

Both official distributions are read, and nothing is ever downloaded:

- the **binary version** (``cifar-10-batches-bin``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
  ``test_batch.bin``; ``cifar-100-binary``: ``train.bin`` and ``test.bin``). A file is a sequence of
  fixed-size records: the label byte(s) (CIFAR-10: one label; CIFAR-100: coarse label, then fine label),
  then the 3072 pixel bytes of one 32x32 image, channel-major (1024 red, 1024 green, 1024 blue), each
  channel row-major.
- the **Python version** (``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``;
  ``cifar-100-python``: ``train`` and ``test``): pickled dicts with ``data`` (a ``(N, 3072)`` uint8 array
  in the same pixel order) and ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100).
  They are read by `RestrictedUnpickler`, which builds only numpy arrays, dtypes and the builtin
  containers and refuses every other object a pickle asks for, so a hostile file cannot run code.

CIFAR-100 is loaded with its 100 **fine** labels (the usual benchmark); the 20 coarse labels are checked
for range but not returned.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heterograd.data.dataset import Dataset
from heterograd.errors import HeterogradError

#: Prefixes of the dataset names `load_cifar` accepts (``cifar10:<dir>``, ``cifar100:<dir>``).
CIFAR_PREFIXES: tuple[str, ...] = ("cifar10:", "cifar100:")
#: ``(C, H, W)`` of one CIFAR image.
IMAGE_SHAPE: tuple[int, int, int] = (3, 32, 32)
PIXELS = math.prod(IMAGE_SHAPE)
_STD_FLOOR = 1e-8


@dataclass(frozen=True)
class CifarFormat:
    """Where one variant keeps its files and labels.

    Attributes:
        title: human name (``"CIFAR-10"``).
        n_classes: number of (fine) classes.
        folders: conventional folder names of the binary and the Python version.
        bin_train / bin_test: binary file names of each split.
        label_bytes: label bytes before the pixels of a binary record.
        label_byte: which of them holds the returned label.
        py_train / py_test: Python-version file names of each split.
        py_label_key: dict key of the returned labels in the Python version.
        extra_labels: other label bytes/keys and their number of classes (range-checked only).
    """

    title: str
    n_classes: int
    folders: tuple[str, str]
    bin_train: tuple[str, ...]
    bin_test: tuple[str, ...]
    label_bytes: int
    label_byte: int
    py_train: tuple[str, ...]
    py_test: tuple[str, ...]
    py_label_key: str
    extra_labels: tuple[tuple[int, str, int], ...] = ()

    @property
    def record_bytes(self) -> int:
        """Bytes per binary record: label byte(s) plus 3072 pixels."""
        return self.label_bytes + PIXELS


FORMATS: dict[str, CifarFormat] = {
    "cifar10": CifarFormat(
        title="CIFAR-10",
        n_classes=10,
        folders=("cifar-10-batches-bin", "cifar-10-batches-py"),
        bin_train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        bin_test=("test_batch.bin",),
        label_bytes=1,
        label_byte=0,
        py_train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        py_test=("test_batch",),
        py_label_key="labels",
    ),
    "cifar100": CifarFormat(
        title="CIFAR-100",
        n_classes=100,
        folders=("cifar-100-binary", "cifar-100-python"),
        bin_train=("train.bin",),
        bin_test=("test.bin",),
        label_bytes=2,
        label_byte=1,
        py_train=("train",),
        py_test=("test",),
        py_label_key="fine_labels",
        extra_labels=((0, "coarse_labels", 20),),
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Restricted unpickling


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(text, "latin1")``), and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode called with encoding {encoding!r}, expected 'latin1'")
    return codecs.encode(text, "latin1", errors)


def _numpy_global(module: str, name: str) -> Callable[[], Any]:
    """A deferred lookup of a numpy global; ``numpy.core`` (numpy 1 pickles) maps to ``numpy._core`` when present."""

    def resolve() -> Any:
        import importlib

        candidates = [module]
        if module.startswith("numpy.core"):
            candidates.insert(0, "numpy._core" + module[len("numpy.core") :])
        for mod in candidates:
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")

    return resolve


#: The only globals a CIFAR pickle needs: how numpy 1 and numpy 2 pickle an array, and bytes under protocol 2.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    **{
        (mod, name): _numpy_global(mod, name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (mod, "_frombuffer"): _numpy_global(mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for an object outside the allowed numpy/builtin types."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dtypes, lists, dicts, tuples, bytes, str, ints and floats only.

    Any other global a pickle names (a class to instantiate, a function to call, such as ``os.system``)
    raises `RefusedPickle` before it is looked up, so no code from the file runs. Persistent IDs are
    refused too. Object arrays that might result are rejected later by the CIFAR checks (pixels must be uint8).
    """

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise RefusedPickle(module, name)
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("persistent_id", repr(pid)[:40])


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with `RestrictedUnpickler` (bytes kept as bytes, as CIFAR's Python 2 files need).

    Raises:
        HeterogradError: the file is missing, truncated or corrupt, or asks for a disallowed object.
    """
    raw = _read(path, "pickled CIFAR batch")
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except RefusedPickle as exc:
        raise HeterogradError(
            f"refusing to load {path}: the pickle asks for {exc.module}.{exc.name}, but a CIFAR file holds only "
            "numpy arrays, lists, dicts, bytes, str and ints; it is not a CIFAR batch or was tampered with, "
            "replace it with the official file"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise HeterogradError(
            f"truncated or corrupt pickle file {path} ({detail}); expected a pickled dict with 'data' "
            "(N, 3072) uint8 and the labels, replace it with the official file"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Readers


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise HeterogradError(f"{what} {path} does not exist; check the folder") from None
    except OSError as exc:
        raise HeterogradError(
            f"cannot read {what} {path} ({' '.join(str(exc.strerror or exc).split())}); check its permissions"
        ) from None


def _check_labels(fmt: CifarFormat, path: Path, labels: np.ndarray, n_classes: int, what: str) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise HeterogradError(
            f"corrupt {fmt.title} file {path}: {what} span [{int(labels.min())}, {int(labels.max())}] but must lie "
            f"in [0, {n_classes}); replace it with the official file"
        )


def read_binary_batch(fmt: CifarFormat, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file: pixels ``(N, 3072)`` uint8 and labels ``(N,)`` int64.

    Raises:
        HeterogradError: the file is missing, empty, not a whole number of records, or has labels out of range.
    """
    raw = _read(path, f"{fmt.title} binary file")
    record = fmt.record_bytes
    if not raw or len(raw) % record:
        parts = "1 label byte" if fmt.label_bytes == 1 else "2 label bytes (coarse, fine)"
        raise HeterogradError(
            f"truncated {fmt.title} binary file {path}: {len(raw)} bytes is not a whole, non-zero number of "
            f"{record}-byte records ({parts} + {PIXELS} pixel bytes); download it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    for byte, what, n in fmt.extra_labels:
        _check_labels(fmt, path, records[:, byte], n, what)
    labels = records[:, fmt.label_byte].astype(np.int64)
    _check_labels(fmt, path, labels, fmt.n_classes, "labels")
    return np.ascontiguousarray(records[:, fmt.label_bytes :]), labels


def _field(batch: dict[Any, Any], key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_python_batch(fmt: CifarFormat, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One Python-version batch (a pickled dict): pixels ``(N, 3072)`` uint8 and labels ``(N,)`` int64.

    Keys may be bytes (the official Python 2 files) or str.

    Raises:
        HeterogradError: missing/corrupt/hostile file, missing keys, wrong array types or shapes.
    """
    batch = restricted_load(path)
    label_key = fmt.py_label_key
    expected = f"a dict with 'data' (N, {PIXELS}) uint8 and '{label_key}' (N ints)"
    if not isinstance(batch, dict):
        raise HeterogradError(
            f"corrupt {fmt.title} file {path}: holds a {type(batch).__name__}, expected {expected}; "
            "replace it with the official file"
        )
    try:
        data, labels = _field(batch, "data"), _field(batch, label_key)
    except KeyError as exc:
        raise HeterogradError(
            f"corrupt {fmt.title} file {path}: no {exc.args[0]!r} entry, expected {expected}; replace it with the "
            "official file"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise HeterogradError(
            f"corrupt {fmt.title} file {path}: 'data' is {got}, expected {expected}; replace it with the official file"
        )
    try:
        label_array = np.asarray(labels)
    except (TypeError, ValueError):
        label_array = np.asarray([])
    if label_array.dtype.kind not in "iu" or label_array.shape != (data.shape[0],):
        raise HeterogradError(
            f"corrupt {fmt.title} file {path}: {data.shape[0]} images but '{label_key}' is not {data.shape[0]} "
            f"integers; expected {expected}, replace it with the official file"
        )
    for _, key, n in fmt.extra_labels:
        try:
            extra = np.asarray(_field(batch, key))
        except KeyError:
            continue
        if extra.dtype.kind in "iu":
            _check_labels(fmt, path, extra, n, key)
    label_array = label_array.astype(np.int64)
    _check_labels(fmt, path, label_array, fmt.n_classes, label_key)
    return np.ascontiguousarray(data), label_array


def find_cifar_files(fmt: CifarFormat, directory: Path) -> tuple[str, list[Path], list[Path]]:
    """Locate one complete set of files in ``directory`` or its conventional subfolders.

    Returns:
        ``(version, train_paths, test_paths)`` with ``version`` ``"binary"`` or ``"python"``; the binary
        version wins when both are complete.

    Raises:
        HeterogradError: the folder is missing, or no complete set is there (the message names what is missing).
    """
    if not directory.is_dir():
        raise HeterogradError(
            f"{fmt.title} folder {directory} does not exist or is not a folder; pass the folder holding the "
            f"{fmt.folders[0]} or {fmt.folders[1]} files"
        )
    places = [directory, *(directory / f for f in fmt.folders if (directory / f).is_dir())]
    partial: list[str] = []
    for place in places:
        for version, train, test in (("binary", fmt.bin_train, fmt.bin_test), ("python", fmt.py_train, fmt.py_test)):
            names = [*train, *test]
            present = [n for n in names if (place / n).is_file()]
            if len(present) == len(names):
                return version, [place / n for n in train], [place / n for n in test]
            if present:
                missing = ", ".join(n for n in names if n not in present)
                partial.append(f"{place} has the {version} version but lacks {missing}")
    if partial:
        raise HeterogradError(f"incomplete {fmt.title} files: {'; '.join(partial)}; put the missing files there")
    raise HeterogradError(
        f"no {fmt.title} files in {directory}: expected {', '.join((*fmt.bin_train, *fmt.bin_test))} (binary "
        f"version) or {', '.join((*fmt.py_train, *fmt.py_test))} (Python version), there or in "
        f"{fmt.folders[0]}/ or {fmt.folders[1]}/"
    )


# ---------------------------------------------------------------------------------------------------------
# Loader


def _channel_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std of ``(N, 3072)`` uint8 pixels scaled to [0, 1] (from byte histograms)."""
    channels = pixels.reshape(len(pixels), IMAGE_SHAPE[0], -1)
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(IMAGE_SHAPE[0]):
        counts = np.bincount(np.ascontiguousarray(channels[:, c]).reshape(-1), minlength=256).astype(np.float64)
        mean = float(counts @ levels / counts.sum())
        std = math.sqrt(float(counts @ (levels - mean) ** 2 / counts.sum()))
        means.append(mean)
        stds.append(std if std >= _STD_FLOOR else 1.0)
    return np.array(means), np.array(stds)


def _take(name: str, split: str, x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if n > len(y):
        what = "n_train" if split == "train" else "n_test"
        raise HeterogradError(
            f"{what}={n} exceeds the {len(y)} {split} examples of dataset {name!r}; pass {what} <= {len(y)} "
            "or leave it unset"
        )
    return x[:n], y[:n]


def load_cifar(name: str, *, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """Load ``cifar10:<dir>`` or ``cifar100:<dir>``.

    ``<dir>`` is the folder holding the files or its parent (the folder the archive was extracted into).
    Pixels are scaled to [0, 1] and normalised per channel with the mean and std of the training images
    kept (after ``n_train``), so each channel of the training set has mean 0 and std 1.

    Args:
        name: ``cifar10:<dir>`` or ``cifar100:<dir>`` (``~`` expanded).
        n_train: keep the first ``n_train`` training images (batches in order 1..5).
        n_test: keep the first ``n_test`` test images.

    Returns:
        A `Dataset` with x ``(N, 3072)`` float32 (flat layout, channel-major), y ``(N,)`` int64 in
        ``[0, 10)`` or ``[0, 100)`` (fine labels), ``image_shape=(3, 32, 32)``.

    Raises:
        HeterogradError: unknown prefix, missing folder or files, truncated/corrupt/hostile files.
    """
    prefix, _, rest = name.strip().partition(":")
    fmt = FORMATS.get(prefix.lower())
    if fmt is None:
        raise HeterogradError(f"unknown CIFAR dataset {name!r}; pass cifar10:<dir> or cifar100:<dir>")
    if not rest.strip():
        raise HeterogradError(f"dataset {name!r} names no folder; pass {prefix.lower()}:<dir>, e.g. {prefix}:~/data")
    directory = Path(rest.strip()).expanduser()
    version, train_paths, test_paths = find_cifar_files(fmt, directory)
    read = read_binary_batch if version == "binary" else read_python_batch

    def split(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read(fmt, p) for p in paths]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_tr, y_tr = _take(name, "train", *split(train_paths), n_train)
    x_te, y_te = _take(name, "test", *split(test_paths), n_test)
    mean, std = _channel_stats(x_tr)

    def normalise(pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pixels).to(torch.float32).div_(255.0).view(len(pixels), IMAGE_SHAPE[0], -1)
        x.sub_(torch.from_numpy(mean).float()[:, None]).div_(torch.from_numpy(std).float()[:, None])
        return x.view(len(pixels), PIXELS)

    return Dataset(
        name=name.strip(),
        x_train=normalise(x_tr),
        y_train=torch.from_numpy(y_tr),
        x_test=normalise(x_te),
        y_test=torch.from_numpy(y_te),
        n_classes=fmt.n_classes,
        image_shape=IMAGE_SHAPE,
    )
