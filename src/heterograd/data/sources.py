"""Dataset loaders: ``digits``, ``mnist1d``, ``teacher``, ``fashion-mnist``, ``idx:<dir>``, ``cifar10/100:<dir>``,
``imagefolder:<dir>``.

Everything here works offline. Heavy imports (scikit-learn, mnist1d) happen on first use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import numbers
import os
import random
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from heterograd.data.cifar import CIFAR_PREFIXES, load_cifar
from heterograd.data.dataset import Dataset
from heterograd.data.idx import find_idx_files, read_idx
from heterograd.data.imagefolder import IMAGEFOLDER_PREFIX, load_imagefolder
from heterograd.errors import HeterogradError, unknown_choice

#: Names accepted by `load_dataset`, besides ``idx:<dir>``.
DATASETS: tuple[str, ...] = ("digits", "mnist1d", "teacher", "fashion-mnist")
#: Prefix of the ``idx:<dir>`` form, which loads the four MNIST-style IDX files found in ``<dir>``.
IDX_PREFIX = "idx:"
#: Where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming the on-disk cache folder (``off`` disables the file cache).
CACHE_ENV = "HETEROGRAD_CACHE"

#: ``digits`` is split with this seed whatever ``seed`` is passed, so every run sees the same split.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
#: Teacher network layer sizes: input, tanh hidden layer, linear output.
TEACHER_DIMS: tuple[int, int, int] = (20, 30, 5)
TEACHER_N_TRAIN = 2000
TEACHER_N_TEST = 500
TEACHER_NOISE_STD = 0.01

_STD_FLOOR = 1e-8
_CACHE_OFF = frozenset({"", "0", "off", "none", "false", "no"})
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


# ---------------------------------------------------------------------------------------------------------
# Public entry point


def load_dataset(
    name: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None, image: bool = False
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of `DATASETS` (case-insensitive, ``_`` accepted for ``-``), ``idx:<dir>``,
            ``cifar10:<dir>`` or ``cifar100:<dir>``.

            - ``digits``: scikit-learn's 8x8 digits, 1797 images -> 1437 train / 360 test, D=64,
              10 classes. Pixels are divided by 16, split 80/20 stratified with the fixed seed
              `DIGITS_SPLIT_SEED` (independent of ``seed``, so every training seed sees the same
              split), then standardised per feature with the training mean/std (constant features
              keep std 1).
            - ``mnist1d``: the MNIST-1D default set generated locally (no download), 4000 train /
              1000 test, D=40, 10 classes; already standardised by the generator. Generated once per
              process and cached on disk (see `cache_dir`).
            - ``teacher``: regression on a random tanh teacher ``20 -> 30 (tanh) -> 5 (linear)``,
              weights ``N(0, 1/fan_in)``, no biases, inputs ``N(0, I)``, targets plus ``N(0, 0.01^2)``
              noise on both splits; 2000 train / 500 test unless ``n_train``/``n_test`` say otherwise.
              Everything is drawn from a ``torch.Generator`` seeded with ``seed``; the test set does
              not depend on ``n_train``.
            - ``fashion-mnist``: ``idx:/usr/share/datasets/fashion-mnist`` (Debian package
              ``dataset-fashion-mnist``), 60000 train / 10000 test, D=784, 10 classes.
            - ``idx:<dir>``: the four MNIST-style IDX files in ``<dir>`` (e.g. MNIST itself), raw or
              gzipped. Images are flattened to ``rows*cols`` features, scaled by 1/255, then
              standardised with a single mean and std over all training pixels (the usual MNIST
              normalisation; per-pixel statistics would blow up pixels that are almost always blank).
              ``n_classes`` is the largest training label plus one. ``image_shape`` is ``(1, rows, cols)``.
            - ``cifar10:<dir>`` / ``cifar100:<dir>``: CIFAR from the files a user has on disk (binary or
              Python version), 50000 train / 10000 test, D=3072, ``image_shape`` ``(3, 32, 32)``,
              normalised per channel with the training mean/std; CIFAR-100 uses the 100 fine labels.
              See `heterograd.data.cifar.load_cifar`.
            - ``imagefolder:<dir>[@SIZE]``: an ImageNet-style folder, ``<dir>/train/<class>/*`` and
              ``<dir>/val/<class>/*`` images read with Pillow at ``SIZE x SIZE`` (default 32), normalised per
              channel. See `heterograd.data.imagefolder`.
        seed: random seed; only ``teacher`` is random, the other datasets are fixed.
        n_train: keep only the first ``n_train`` training examples (``teacher``: generate that many).
        n_test: keep only the first ``n_test`` test examples (``teacher``: generate that many).
        image: return the inputs in the image layout ``(N, C, H, W)`` for convolutional models (see
            `Dataset.images`); the default is the flat layout ``(N, D)``. Image datasets carry their
            ``image_shape`` in both layouts (``digits``: ``(1, 8, 8)``).

    Returns:
        A `Dataset` with float32 inputs ``(N, D)`` (``(N, C, H, W)`` with ``image=True``) and int64
        labels ``(N,)`` (classification) or float32 targets ``(N, 5)`` (``teacher``). Feature statistics
        are computed on the training examples actually returned.

    Raises:
        HeterogradError: unknown name, bad ``seed``/``n_train``/``n_test``, missing or corrupt files,
            ``image=True`` for a dataset that holds no images.
    """
    if not isinstance(image, bool):
        raise HeterogradError(f"image must be True or False, got {image!r}")
    ds = _load(name, seed, n_train, n_test)
    return ds.images() if image else ds


def _load(name: str, seed: object, n_train: object, n_test: object) -> Dataset:
    """`load_dataset` without the layout choice: inputs ``(N, D)``."""
    if not isinstance(name, str) or not name.strip():
        raise HeterogradError(f"dataset name must be a non-empty string, got {name!r}; pass e.g. 'digits'")
    seed = _check_seed(seed)
    n_train = _check_count(n_train, "n_train")
    n_test = _check_count(n_test, "n_test")

    stripped = name.strip()
    if stripped.lower().startswith("python:"):  # recorded by a run on a Dataset passed in Python
        raise HeterogradError(
            f"data {stripped!r} was a Dataset passed in Python, not a built-in set or a folder, so it cannot be "
            "loaded by name (e.g. by --config); rerun it in Python with the same data: "
            "heterograd.train(config, dataset=...), Trainer(config, dataset) or ModuleTrainer(config, dataset)"
        )
    if stripped.lower().startswith(IDX_PREFIX):
        directory = stripped[len(IDX_PREFIX) :].strip()
        if not directory:
            raise HeterogradError("dataset 'idx:' names no folder; pass idx:<dir>, e.g. idx:~/data/mnist")
        return _load_idx(stripped, Path(directory).expanduser(), n_train, n_test)
    if stripped.lower().startswith(CIFAR_PREFIXES):
        return load_cifar(stripped, n_train=n_train, n_test=n_test)
    if stripped.lower().startswith(IMAGEFOLDER_PREFIX):
        return load_imagefolder(stripped, n_train=n_train, n_test=n_test)

    key = stripped.lower().replace("_", "-")
    if key == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise HeterogradError(
                f"Fashion-MNIST not found at {FASHION_MNIST_DIR}; install it with "
                "`apt-get install dataset-fashion-mnist` or pass idx:<dir> naming a folder with its IDX files"
            )
        return _load_idx("fashion-mnist", FASHION_MNIST_DIR, n_train, n_test)
    if key == "mnist":
        raise HeterogradError(
            "MNIST has no default location; pass idx:<dir> naming a folder with train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz)"
        )
    loader = _LOADERS.get(key)
    if loader is None:
        error = unknown_choice(
            "dataset", name, [*DATASETS, f"{IDX_PREFIX}<dir>", *(f"{p}<dir>" for p in CIFAR_PREFIXES)]
        )
        if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
            digits = "100" if "100" in key else "10"
            raise HeterogradError(
                f"{error} (CIFAR-{digits} has no default location: pass cifar{digits}:<dir> naming the folder with "
                "its binary or Python files, e.g. cifar10:~/data/cifar-10-batches-bin)"
            )
        raise error
    return loader(seed, n_train, n_test)


# ---------------------------------------------------------------------------------------------------------
# Argument checks and shared helpers


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise HeterogradError(f"seed must be an integer in [0, 2**63), got {seed!r}; pass e.g. seed=0")
    return int(seed)


def _check_count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise HeterogradError(
            f"{what} must be a positive integer, got {value!r}; pass e.g. {what}=1000 or leave it unset"
        )
    return int(value)


def _take(name: str, split: str, x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples of ``(x, y)`` (all of them when ``n`` is None)."""
    if n is None:
        return x, y
    available = len(y)
    if n > available:
        what = "n_train" if split == "train" else "n_test"
        raise HeterogradError(
            f"{what}={n} exceeds the {available} {split} examples of dataset {name!r}; "
            f"pass {what} <= {available} or leave it unset"
        )
    return x[:n], y[:n]


def _standardise_features(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise ``(N, D)`` features with the training mean/std; constant features keep std 1."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return (x_train - mean) / std, (x_test - mean) / std


# ---------------------------------------------------------------------------------------------------------
# digits


def _load_digits(seed: int, n_train: int | None, n_test: int | None) -> Dataset:
    """scikit-learn digits: x ``(1437, 64)`` / ``(360, 64)`` float32, y int64 in ``[0, 10)``."""
    del seed  # the split is fixed on purpose, see DIGITS_SPLIT_SEED
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    x_tr, y_tr = _take("digits", "train", x_tr, y_tr, n_train)
    x_te, y_te = _take("digits", "test", x_te, y_te, n_test)
    x_tr, x_te = _standardise_features(x_tr, x_te)
    return Dataset(
        name="digits",
        x_train=torch.tensor(x_tr, dtype=torch.float32),
        y_train=torch.tensor(y_tr, dtype=torch.int64),
        x_test=torch.tensor(x_te, dtype=torch.float32),
        y_test=torch.tensor(y_te, dtype=torch.int64),
        n_classes=10,
        image_shape=(1, 8, 8),
    )


# ---------------------------------------------------------------------------------------------------------
# mnist1d


def cache_dir() -> Path | None:
    """Folder for on-disk caches, or None when file caching is off.

    ``$HETEROGRAD_CACHE`` if set (``off``, ``0`` or empty disables caching), else
    ``$XDG_CACHE_HOME/heterograd``, else ``~/.cache/heterograd``.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _CACHE_OFF else Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "heterograd"
    try:
        return Path.home() / ".cache" / "heterograd"
    except RuntimeError:  # no home directory
        return None


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        raise HeterogradError(
            "dataset 'mnist1d' needs the mnist1d package; install it with `pip install mnist1d`"
        ) from None


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Run the MNIST-1D generator with its default arguments (never its download path).

    The generator seeds Python's and numpy's global RNGs; their states are restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise HeterogradError(
            f"dataset 'mnist1d' needs the mnist1d package ({exc}); install it with `pip install mnist1d`"
        ) from None
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            raw = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": np.asarray(raw["x"], dtype=np.float32),
        "y": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _valid_mnist1d(arrays: dict[str, np.ndarray]) -> bool:
    x, y, x_te, y_te = (arrays[k] for k in _MNIST1D_KEYS)
    return (
        x.dtype == np.float32
        and x_te.dtype == np.float32
        and y.dtype == np.int64
        and y_te.dtype == np.int64
        and x.ndim == 2
        and x_te.ndim == 2
        and x.shape[1] == x_te.shape[1]
        and y.shape == (x.shape[0],)
        and y_te.shape == (x_te.shape[0],)
        and len(y) > 0
        and len(y_te) > 0
        and bool(np.isfinite(x).all() and np.isfinite(x_te).all())
        and int(min(y.min(), y_te.min())) >= 0
        and int(max(y.max(), y_te.max())) < 10
    )


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named arrays of an ``.npz`` cache file, or None if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.array(npz[k]) for k in keys}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file and ``os.replace``; failures are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _mnist1d_from(directory: Path | None) -> dict[str, np.ndarray]:
    """MNIST-1D arrays, read from ``directory``'s cache file when valid, else generated (and cached)."""
    cache_file = None
    if directory is not None:
        cache_file = directory / f"mnist1d-{_mnist1d_version()}-default.npz"
        cached = _read_npz(cache_file, _MNIST1D_KEYS)
        if cached is not None and _valid_mnist1d(cached):
            return cached
    arrays = _generate_mnist1d()
    if cache_file is not None:
        _write_npz_atomic(cache_file, arrays)
    return arrays


@functools.cache
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """In-process cache of the MNIST-1D arrays (read-only)."""
    arrays = _mnist1d_from(cache_dir())
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _load_mnist1d(seed: int, n_train: int | None, n_test: int | None) -> Dataset:
    """MNIST-1D: x ``(4000, 40)`` / ``(1000, 40)`` float32, y int64 in ``[0, 10)``."""
    del seed  # the generator always uses its own fixed seed
    arrays = _mnist1d_arrays()
    x_tr, y_tr = _take("mnist1d", "train", arrays["x"], arrays["y"], n_train)
    x_te, y_te = _take("mnist1d", "test", arrays["x_test"], arrays["y_test"], n_test)
    return Dataset(
        name="mnist1d",
        x_train=torch.tensor(x_tr),
        y_train=torch.tensor(y_tr),
        x_test=torch.tensor(x_te),
        y_test=torch.tensor(y_te),
        n_classes=10,
    )


# ---------------------------------------------------------------------------------------------------------
# teacher


def _load_teacher(seed: int, n_train: int | None, n_test: int | None) -> Dataset:
    """Teacher-student regression: x ``(N, 20)`` float32, y ``(N, 5)`` float32, ``n_classes=None``."""
    n_train = TEACHER_N_TRAIN if n_train is None else n_train
    n_test = TEACHER_N_TEST if n_test is None else n_test
    d_in, d_hidden, d_out = TEACHER_DIMS
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_hidden, d_in, generator=gen) / math.sqrt(d_in)
    w2 = torch.randn(d_out, d_hidden, generator=gen) / math.sqrt(d_hidden)
    # Separate streams per split, so the test set is the same whatever n_train is.
    train_seed, test_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=gen))

    def sample(n: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(split_seed)
        x = torch.randn(n, d_in, generator=g)
        noise = TEACHER_NOISE_STD * torch.randn(n, d_out, generator=g)
        return x, torch.tanh(x @ w1.T) @ w2.T + noise

    x_tr, y_tr = sample(n_train, train_seed)
    x_te, y_te = sample(n_test, test_seed)
    return Dataset(name="teacher", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, n_classes=None)


# ---------------------------------------------------------------------------------------------------------
# idx:<dir> and fashion-mnist


def _check_idx_pair(name: str, split: str, images: np.ndarray, labels: np.ndarray, paths: str) -> None:
    if images.ndim < 2 or images.dtype != np.uint8:
        raise HeterogradError(
            f"dataset {name!r}: {split} images must be unsigned bytes with shape (N, rows, cols), got "
            f"{images.dtype} {images.shape} in {paths}; pass MNIST-style idx3-ubyte image files"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise HeterogradError(
            f"dataset {name!r}: {split} labels must be a 1-D integer array, got {labels.dtype} "
            f"{labels.shape} in {paths}; pass MNIST-style idx1-ubyte label files"
        )
    if len(images) != len(labels):
        raise HeterogradError(
            f"dataset {name!r}: {len(images)} {split} images but {len(labels)} {split} labels in {paths}; "
            "the files do not belong together, replace them with a matching pair"
        )
    if len(labels) == 0:
        raise HeterogradError(f"dataset {name!r}: the {split} files {paths} hold no examples; replace them")
    if int(labels.min()) < 0:
        raise HeterogradError(
            f"dataset {name!r}: {split} labels include {int(labels.min())} in {paths}; labels must be "
            "non-negative class indices"
        )


def _load_idx(name: str, directory: Path, n_train: int | None, n_test: int | None) -> Dataset:
    """MNIST-style IDX folder: x ``(N, rows*cols)`` float32 standardised, y int64 in ``[0, n_classes)``."""
    files = find_idx_files(directory)
    train_paths = f"{files['train_images'].name} / {files['train_labels'].name}"
    test_paths = f"{files['test_images'].name} / {files['test_labels'].name}"
    x_tr, y_tr = read_idx(files["train_images"]), read_idx(files["train_labels"])
    x_te, y_te = read_idx(files["test_images"]), read_idx(files["test_labels"])
    _check_idx_pair(name, "train", x_tr, y_tr, train_paths)
    _check_idx_pair(name, "test", x_te, y_te, test_paths)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise HeterogradError(
            f"dataset {name!r}: train images are {x_tr.shape[1:]} but test images are {x_te.shape[1:]} in "
            f"{directory}; the files belong to different datasets, use a matching set"
        )
    n_classes = int(y_tr.max()) + 1
    if int(y_te.max()) >= n_classes:
        raise HeterogradError(
            f"dataset {name!r}: test labels reach {int(y_te.max())} but training labels stop at "
            f"{n_classes - 1} in {directory}; the label files are corrupt or mismatched, replace them"
        )
    x_tr, y_tr = _take(name, "train", x_tr, y_tr, n_train)
    x_te, y_te = _take(name, "test", x_te, y_te, n_test)

    # Exact pixel mean/std of the kept training images from a histogram of the byte values.
    counts = np.bincount(np.ascontiguousarray(x_tr).reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = float(counts @ levels / counts.sum())
    std = math.sqrt(float(counts @ (levels - mean) ** 2 / counts.sum()))
    std = std if std >= _STD_FLOOR else 1.0

    def pixels(images: np.ndarray) -> torch.Tensor:
        flat = np.ascontiguousarray(images.reshape(len(images), -1))
        return torch.from_numpy(flat).to(torch.float32).div_(255.0).sub_(mean).div_(std)

    x_train, x_test = pixels(x_tr), pixels(x_te)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_test=x_test,
        y_test=torch.from_numpy(y_te.astype(np.int64)),
        n_classes=n_classes,
        image_shape=(1, int(x_tr.shape[1]), int(x_tr.shape[2])) if x_tr.ndim == 3 else None,
    )


_LOADERS: dict[str, Callable[[int, int | None, int | None], Dataset]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "teacher": _load_teacher,
}
