"""Tests for heterograd.data: loaders, the IDX reader and the minibatch iterator."""

from __future__ import annotations

import gzip
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from heterograd.data import DATASETS, Dataset, iterate_minibatches, load_dataset, read_idx, sources
from heterograd.errors import HeterogradError

IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the on-disk cache of the test session out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sources.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        yield


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (big-endian header and data)."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path`` as IDX, gzipped when the name ends in ``.gz``."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_dir(
    directory: Path,
    *,
    n_train: int = 30,
    n_test: int = 12,
    rows: int = 4,
    cols: int = 3,
    gz: bool = False,
    sep: str = "-",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A synthetic MNIST-style folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, size=(n_train, rows, cols), dtype=np.uint8),
        "train-labels": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images": rng.integers(0, 256, size=(n_test, rows, cols), dtype=np.uint8),
        "t10k-labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem, array in arrays.items():
        kind = "idx3" if "images" in stem else "idx1"
        write_idx(directory / f"{stem}{sep}{kind}-ubyte{suffix}", array)
    return arrays


def error_line(excinfo: pytest.ExceptionInfo[HeterogradError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, f"expected a one-line message, got {message!r}"
    return message


# ---------------------------------------------------------------------------------------------------------
# Dataset loaders


def test_digits_shapes_and_fixed_split() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.task == "classification"
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.n_classes == 10 and ds.input_dim == 64 and ds.output_dim == 10
    assert set(ds.y_test.tolist()) == set(range(10))
    # Standardised with training statistics; constant pixels stay finite.
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()
    assert ds.x_train.mean(0).abs().max() < 1e-5
    # The split does not depend on the seed.
    other = load_dataset("digits", seed=7)
    assert torch.equal(ds.x_train, other.x_train) and torch.equal(ds.y_test, other.y_test)


def test_digits_subset_and_name_normalisation() -> None:
    ds = load_dataset("  Digits ", n_train=100, n_test=50)
    assert ds.x_train.shape == (100, 64) and ds.y_test.shape == (50,)
    full = load_dataset("digits")
    assert torch.equal(ds.y_train, full.y_train[:100])


def test_teacher_shapes_and_determinism() -> None:
    ds = load_dataset("teacher", seed=3)
    assert ds.task == "regression" and ds.n_classes is None
    assert ds.x_train.shape == (2000, 20) and ds.y_train.shape == (2000, 5)
    assert ds.x_test.shape == (500, 20) and ds.y_test.shape == (500, 5)
    assert ds.y_train.dtype == torch.float32 and ds.input_dim == 20 and ds.output_dim == 5
    again = load_dataset("teacher", seed=3)
    for a, b in [(ds.x_train, again.x_train), (ds.y_train, again.y_train), (ds.y_test, again.y_test)]:
        assert torch.equal(a, b)
    other = load_dataset("teacher", seed=4)
    assert not torch.allclose(ds.x_train, other.x_train)
    assert not torch.allclose(ds.y_test, other.y_test)
    # Targets are a smooth function of the inputs, not noise: a non-trivial but bounded spread.
    assert 0.1 < float(ds.y_train.std()) < 2.0


def test_teacher_sizes_and_stable_test_set() -> None:
    small = load_dataset("teacher", seed=1, n_train=64, n_test=32)
    assert small.x_train.shape == (64, 20) and small.y_test.shape == (32, 5)
    big = load_dataset("teacher", seed=1, n_train=3000)
    assert big.x_train.shape == (3000, 20)
    assert torch.equal(big.x_test, load_dataset("teacher", seed=1).x_test)


def test_mnist1d_shapes_and_rng_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.CACHE_ENV, "off")
    sources._mnist1d_arrays.cache_clear()
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    ds = load_dataset("mnist1d")
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.n_classes == 10 and int(ds.y_train.min()) == 0 and int(ds.y_train.max()) == 9
    # Cached in-process, and callers cannot corrupt the cache through the returned tensors.
    ds.x_train.zero_()
    again = load_dataset("mnist1d", n_train=10)
    assert again.x_train.shape == (10, 40) and again.x_train.abs().sum() > 0


def test_mnist1d_file_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[int] = []
    fake = {
        "x": np.ones((8, 40), dtype=np.float32),
        "y": np.arange(8, dtype=np.int64),
        "x_test": np.zeros((4, 40), dtype=np.float32),
        "y_test": np.arange(4, dtype=np.int64),
    }

    def generate() -> dict[str, np.ndarray]:
        calls.append(1)
        return {k: v.copy() for k, v in fake.items()}

    monkeypatch.setattr(sources, "_generate_mnist1d", generate)
    first = sources._mnist1d_from(tmp_path)
    second = sources._mnist1d_from(tmp_path)
    assert len(calls) == 1
    for key, value in fake.items():
        assert np.array_equal(first[key], value) and np.array_equal(second[key], value)
    (cache_file,) = tmp_path.glob("mnist1d-*.npz")
    assert not list(tmp_path.glob("*.tmp"))
    cache_file.write_bytes(b"not a zip file")
    third = sources._mnist1d_from(tmp_path)
    assert len(calls) == 2 and np.array_equal(third["x"], fake["x"])
    # An unwritable cache location is not an error.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert np.array_equal(sources._mnist1d_from(blocker / "sub")["y"], fake["y"])


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))
    assert sources.cache_dir() == tmp_path
    monkeypatch.setenv(sources.CACHE_ENV, "off")
    assert sources.cache_dir() is None
    monkeypatch.delenv(sources.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.cache_dir() == tmp_path / "heterograd"


@pytest.mark.needs_data("fashion-mnist")
def test_fashion_mnist_loads() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.n_classes == 10
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1.0) < 1e-3
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10


def test_fashion_mnist_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("fashion-mnist")
    message = error_line(excinfo)
    assert "apt-get install dataset-fashion-mnist" in message and "idx:<dir>" in message


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("cifar10")
    message = error_line(excinfo)
    assert "'cifar10'" in message
    for choice in [*DATASETS, "idx:<dir>"]:
        assert choice in message


def test_mnist_points_to_idx() -> None:
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("mnist")
    assert "idx:<dir>" in error_line(excinfo)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_train": -5}, "n_train"),
        ({"n_test": 2.5}, "n_test"),
        ({"n_train": True}, "n_train"),
        ({"n_test": "10"}, "n_test"),
        ({"n_train": 5000}, "n_train=5000 exceeds"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]
    assert needle in error_line(excinfo)


def test_empty_name_and_empty_idx_dir() -> None:
    for name in ["", "idx:", "  "]:
        with pytest.raises(HeterogradError) as excinfo:
            load_dataset(name)
        error_line(excinfo)


# ---------------------------------------------------------------------------------------------------------
# IDX reader and idx:<dir>


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: type, gz: bool) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5)
    if dtype is np.uint8:
        array = array + 7
    array = array.astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.shape == (2, 3, 5)
    assert np.array_equal(out, array)
    out[0, 0, 0] = 1  # writable


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_read_idx_round_trip_property(array: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = read_idx(write_idx(Path(tmp) / "x.idx", array))
    assert out.shape == array.shape
    assert np.array_equal(out, array, equal_nan=array.dtype.kind == "f")


@pytest.mark.parametrize(("gz", "sep"), [(False, "-"), (True, "-"), (False, "."), (True, ".")])
def test_idx_dir_round_trip(tmp_path: Path, gz: bool, sep: str) -> None:
    arrays = make_idx_dir(tmp_path / "data", gz=gz, sep=sep)
    ds = load_dataset(f"idx:{tmp_path / 'data'}")
    assert isinstance(ds, Dataset) and ds.name == f"idx:{tmp_path / 'data'}"
    assert ds.x_train.shape == (30, 12) and ds.x_test.shape == (12, 12)
    assert ds.y_train.dtype == torch.int64 and ds.n_classes == 10
    assert ds.y_train.tolist() == arrays["train-labels"].tolist()
    # x = (pixels / 255 - mean) / std with one mean/std over all training pixels.
    pixels = arrays["train-images"].reshape(30, -1) / 255.0
    expected = (pixels - pixels.mean()) / pixels.std()
    assert np.allclose(ds.x_train.numpy(), expected, atol=1e-5)
    test_pixels = arrays["t10k-images"].reshape(12, -1) / 255.0
    assert np.allclose(ds.x_test.numpy(), (test_pixels - pixels.mean()) / pixels.std(), atol=1e-5)


def test_idx_dir_subset_and_uppercase_names(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.upper()))
    ds = load_dataset(f"idx:{tmp_path}", n_train=7, n_test=3)
    assert ds.x_train.shape == (7, 12) and ds.y_test.shape == (3,)
    assert ds.n_classes == 10  # from all training labels, not only the first 7
    assert abs(float(ds.x_train.mean())) < 1e-5


def test_idx_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path / 'nowhere'}")
    message = error_line(excinfo)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_idx_missing_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "README").write_text("hello")
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path}")
    message = error_line(excinfo)
    assert "t10k-labels-idx1-ubyte" in message and "README" in message and "train-images-idx3-ubyte" in message


def test_idx_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    message = error_line(excinfo)
    assert "12 34 56 78" in message and "not an IDX file" in message


@pytest.mark.parametrize("cut", [2, 6, 10])
def test_idx_truncated(tmp_path: Path, cut: int) -> None:
    data = idx_bytes(np.zeros((3, 2), dtype=np.uint8))
    path = tmp_path / "x.idx"
    path.write_bytes(data[:-cut])
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    assert "truncated" in error_line(excinfo)


def test_idx_data_size_mismatch_reports_counts(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros((4, 5), dtype=np.int16))[:-3])
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    assert "expected 40 data bytes" in error_line(excinfo) and "found 37" in str(excinfo.value)
    path.write_bytes(idx_bytes(np.zeros((4, 5), dtype=np.int16)) + b"\x00")
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    assert "found 41" in error_line(excinfo)


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_idx_bad_gzip(tmp_path: Path, content: str) -> None:
    compressed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    data = compressed[: len(compressed) // 2] if content == "truncated" else b"\x1f\x8b" + bytes(30)
    path = tmp_path / "x.idx.gz"
    path.write_bytes(data)
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    assert "corrupt gzip" in error_line(excinfo)


def test_idx_gz_name_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.idx.gz"
    path.write_bytes(b"hello world")
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(path)
    assert "nor a gzip stream" in error_line(excinfo)
    # A raw IDX file with a .gz name is still read.
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))
    assert read_idx(path).tolist() == [0, 1, 2, 3, 4]


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HeterogradError) as excinfo:
        read_idx(tmp_path / "absent")
    assert "does not exist" in error_line(excinfo)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path}")
    message = error_line(excinfo)
    assert "30 train images but 29 train labels" in message


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    labels = np.arange(12, dtype=np.uint8) % 10
    labels[3] = 42
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path}")
    assert "test labels reach 42" in error_line(excinfo)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, -1, dtype=np.int8))
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path}")
    assert "non-negative" in error_line(excinfo)


def test_idx_images_must_be_bytes(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((30, 4, 3), dtype=np.float32))
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"idx:{tmp_path}")
    assert "unsigned bytes" in error_line(excinfo)


# ---------------------------------------------------------------------------------------------------------
# Dataset container and minibatches


def test_dataset_to_keeps_labels_int64() -> None:
    ds = load_dataset("digits", n_train=20, n_test=10).to(dtype=torch.float64)
    assert ds.x_train.dtype == torch.float64 and ds.x_test.dtype == torch.float64
    assert ds.y_train.dtype == torch.int64
    reg = load_dataset("teacher", n_train=8, n_test=4).to("cpu", torch.float64)
    assert reg.y_train.dtype == torch.float64 and reg.task == "regression"
    assert "x_train=(8, 20)" in repr(reg)


def test_dataset_validates_labels() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(HeterogradError) as excinfo:
        Dataset("toy", x, torch.tensor([0, 1, 2, 5]), x, torch.zeros(4, dtype=torch.int64), n_classes=3)
    assert "n_classes is 3" in error_line(excinfo)
    with pytest.raises(HeterogradError) as excinfo:
        Dataset("toy", x, torch.zeros(3, dtype=torch.int64), x, torch.zeros(4, dtype=torch.int64), n_classes=3)
    error_line(excinfo)


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterate_minibatches_covers_each_sample_once(drop_last: bool) -> None:
    x = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(23)
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_minibatches(x, y, 5, generator=gen, drop_last=drop_last))
    sizes = [len(yb) for _, yb in batches]
    assert sizes == ([5] * 4 if drop_last else [5, 5, 5, 5, 3])
    seen = torch.cat([yb for _, yb in batches])
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb)
    if drop_last:
        assert len(set(seen.tolist())) == 20
    else:
        assert sorted(seen.tolist()) == list(range(23))
        assert seen.tolist() != list(range(23))  # shuffled


def test_iterate_minibatches_reproducible_and_ordered() -> None:
    x, y = torch.randn(50, 2), torch.arange(50)

    def epoch(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in iterate_minibatches(x, y, 8, generator=gen)]).tolist()

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2)
    gen = torch.Generator().manual_seed(1)
    ordered = [yb for _, yb in iterate_minibatches(x, y, 8, generator=gen, shuffle=False)]
    assert torch.cat(ordered).tolist() == list(range(50))


def test_iterate_minibatches_validates() -> None:
    gen = torch.Generator()
    for batch_size in [0, -1, 2.0, True]:
        with pytest.raises(HeterogradError) as excinfo:
            list(iterate_minibatches(torch.zeros(4, 1), torch.zeros(4), batch_size, generator=gen))  # type: ignore[arg-type]
        error_line(excinfo)
    with pytest.raises(HeterogradError) as excinfo:
        list(iterate_minibatches(torch.zeros(4, 1), torch.zeros(3), 2, generator=gen))
    error_line(excinfo)
