"""Tests for image data: the image layout of Dataset, CIFAR readers on written files, the restricted unpickler,
per-channel normalisation and the seeded crop/flip augmentation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from heterograd.data import (
    Augment,
    Dataset,
    channel_stats,
    iterate_minibatches,
    load_dataset,
    normalize_channels,
    random_crop,
    random_hflip,
)
from heterograd.data import cifar as cifar_mod
from heterograd.data.images import crop_at
from heterograd.errors import HeterogradError
from heterograd.models import make_model


def one_line(excinfo: pytest.ExceptionInfo[HeterogradError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------------
# Writers of small files in the official formats


def cifar_pixels(n: int, seed: int) -> np.ndarray:
    """``(n, 3072)`` uint8 whose three channels have clearly different ranges (R low, G mid, B high)."""
    rng = np.random.default_rng(seed)
    channels = [rng.integers(lo, lo + 80, size=(n, 1024), dtype=np.uint8) for lo in (0, 80, 170)]
    return np.concatenate(channels, axis=1)


def write_binary(path: Path, pixels: np.ndarray, labels: list[np.ndarray]) -> None:
    """Records of label byte(s) then 3072 pixel bytes."""
    cols = [np.asarray(lab, dtype=np.uint8)[:, None] for lab in labels]
    path.write_bytes(np.concatenate([*cols, pixels], axis=1).tobytes())


def write_pickle(path: Path, batch: dict, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar10(root: Path, version: str, n: int = 6, seed: int = 0, keys: type = bytes, protocol: int = 2) -> dict:
    """Five training batches and a test batch of ``n`` images each; returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        pixels = cifar_pixels(n, seed + i)
        labels = (np.arange(n) + i) % 10
        written[name] = (pixels, labels)
        if version == "binary":
            write_binary(root / f"{name}.bin", pixels, [labels])
        else:
            k = (lambda s: s.encode()) if keys is bytes else (lambda s: s)
            batch = {k("batch_label"): k(f"batch {i}"), k("labels"): labels.tolist(), k("data"): pixels}
            batch[k("filenames")] = [k(f"img{j}.png") for j in range(n)]
            write_pickle(root / name, batch, protocol)
    return written


def make_cifar100(root: Path, version: str, n_train: int = 12, n_test: int = 5) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        pixels = cifar_pixels(n, seed)
        fine = (np.arange(n) * 7 + 50) % 100
        coarse = fine // 5
        written[name] = (pixels, fine, coarse)
        if version == "binary":
            write_binary(root / f"{name}.bin", pixels, [coarse, fine])
        else:
            batch = {b"data": pixels, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
            write_pickle(root / name, batch)
    return written


# ---------------------------------------------------------------------------------------------------------
# Dataset image layout


@pytest.mark.needs_data("fashion-mnist")
def test_fashion_mnist_as_images_keeps_the_flat_default():
    flat = load_dataset("fashion-mnist", n_train=50, n_test=20)
    images = load_dataset("fashion-mnist", n_train=50, n_test=20, image=True)
    assert flat.x_train.shape == (50, 784) and flat.input_shape == (784,) and flat.image_shape == (1, 28, 28)
    assert images.x_train.shape == (50, 1, 28, 28) and images.x_test.shape == (20, 1, 28, 28)
    assert images.input_shape == (1, 28, 28) and images.input_dim == 784 == flat.input_dim
    assert torch.equal(images.x_train.reshape(50, -1), flat.x_train) and torch.equal(images.y_test, flat.y_test)


def test_images_and_flat_are_views_of_each_other():
    ds = Dataset(
        name="toy",
        x_train=torch.randn(6, 12),
        y_train=torch.arange(6) % 3,
        x_test=torch.randn(2, 12),
        y_test=torch.tensor([0, 2]),
        n_classes=3,
        image_shape=(3, 2, 2),
    )
    img = ds.images()
    assert img.x_train.shape == (6, 3, 2, 2) and img.x_train.data_ptr() == ds.x_train.data_ptr()
    assert img.flat().x_train.shape == (6, 12) and ds.flat() is ds
    assert torch.equal(img.x_train[1, 2], ds.x_train[1, 8:12].reshape(2, 2))  # channel-major, row-major
    assert img.to(dtype=torch.float64).x_train.shape == (6, 3, 2, 2)
    assert "image_shape=(3, 2, 2)" in repr(img)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"image_shape": (3, 2, 3)}, "image_shape (3, 2, 3) holds 18 values"),
        ({"image_shape": (3, 4)}, "tuple of three positive ints"),
        ({"image_shape": None, "x_train": torch.randn(6, 3, 2, 2)}, "(N, D)"),
        ({"x_train": torch.randn(6, 3, 2, 1)}, "(N, D) or (N, 3, 2, 2)"),
    ],
)
def test_bad_image_shapes_are_refused(kwargs, fragment):
    base = {
        "name": "toy",
        "x_train": torch.randn(6, 12),
        "y_train": torch.arange(6) % 3,
        "x_test": torch.randn(2, 12),
        "y_test": torch.tensor([0, 2]),
        "n_classes": 3,
        "image_shape": (3, 2, 2),
    }
    with pytest.raises(HeterogradError) as excinfo:
        Dataset(**{**base, **kwargs})
    assert fragment in one_line(excinfo)


def test_feature_datasets_refuse_the_image_layout():
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("teacher", n_train=10, n_test=5, image=True)
    assert "not images" in one_line(excinfo)
    assert load_dataset("digits", image=True).x_train.shape[1:] == (1, 8, 8)


# ---------------------------------------------------------------------------------------------------------
# CIFAR readers


def expected_normalised(train_pixels: np.ndarray, pixels: np.ndarray) -> torch.Tensor:
    """Reference per-channel normalisation, computed directly in float64."""
    tr = train_pixels.reshape(len(train_pixels), 3, 1024).astype(np.float64) / 255.0
    mean = tr.mean(axis=(0, 2))
    std = tr.std(axis=(0, 2))
    x = pixels.reshape(len(pixels), 3, 1024).astype(np.float64) / 255.0
    return torch.from_numpy(((x - mean[:, None]) / std[:, None]).reshape(len(pixels), 3072))


@pytest.mark.parametrize("version", ["binary", "python"])
def test_cifar10_reads_both_versions(tmp_path, version):
    written = make_cifar10(tmp_path / "c10", version)
    ds = load_dataset(f"cifar10:{tmp_path / 'c10'}")
    train_pixels = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert ds.x_train.shape == (30, 3072) and ds.x_test.shape == (6, 3072) and ds.image_shape == (3, 32, 32)
    assert ds.n_classes == 10 and ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.y_train, torch.from_numpy(train_labels))
    assert torch.equal(ds.y_test, torch.from_numpy(written["test_batch"][1]))
    torch.testing.assert_close(ds.x_train.double(), expected_normalised(train_pixels, train_pixels), atol=1e-5, rtol=0)
    ref_test = expected_normalised(train_pixels, written["test_batch"][0])
    torch.testing.assert_close(ds.x_test.double(), ref_test, atol=1e-5, rtol=0)
    img = ds.images().x_train
    assert img.shape == (30, 3, 32, 32)
    means = img.mean(dim=(0, 2, 3))
    stds = img.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(means, torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(stds, torch.ones(3), atol=1e-4, rtol=0)


def test_cifar10_pixel_order_is_channel_major(tmp_path):
    make_cifar10(tmp_path, "binary", n=2)
    raw = bytearray((tmp_path / "test_batch.bin").read_bytes())
    # first test image: red pixel (row 3, col 5) to the channel's maximum byte, blue (0, 0) to its minimum
    raw[1 + 0 * 1024 + 3 * 32 + 5] = 79
    raw[1 + 2 * 1024 + 0] = 170
    (tmp_path / "test_batch.bin").write_bytes(bytes(raw))
    img = load_dataset(f"cifar10:{tmp_path}", image=True).x_test[0]
    assert float(img[0, 3, 5]) == pytest.approx(float(img[0].max()))
    assert float(img[2, 0, 0]) == pytest.approx(float(img[2].min()))


def test_cifar10_finds_the_extracted_subfolder_and_prefers_binary(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py", "python", seed=0)
    written = make_cifar10(tmp_path / "cifar-10-batches-bin", "binary", seed=100)
    ds = load_dataset(f"cifar10:{tmp_path}", n_train=4, n_test=3)
    assert ds.x_train.shape == (4, 3072) and ds.name == f"cifar10:{tmp_path}"
    assert torch.equal(ds.y_test, torch.from_numpy(written["test_batch"][1][:3]))
    first = written["data_batch_1"][0][:4]
    torch.testing.assert_close(ds.x_train.double(), expected_normalised(first, first), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("keys", "protocol"), [(bytes, 2), (str, 4), (bytes, 5)])
def test_cifar10_python_version_with_any_pickle_protocol_and_key_type(tmp_path, keys, protocol):
    written = make_cifar10(tmp_path, "python", keys=keys, protocol=protocol)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert torch.equal(ds.y_test, torch.from_numpy(written["test_batch"][1]))


def test_numpy1_pickles_load(tmp_path):
    """The official files were written by numpy 1, which names numpy.core.multiarray._reconstruct."""
    make_cifar10(tmp_path, "python")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = (tmp_path / name).read_bytes()
        assert b"numpy._core.multiarray" in raw
        (tmp_path / name).write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_dataset(f"cifar10:{tmp_path}").x_train.shape == (30, 3072)


@pytest.mark.parametrize("version", ["binary", "python"])
def test_cifar100_uses_fine_labels(tmp_path, version):
    written = make_cifar100(tmp_path / "cifar-100-binary" if version == "binary" else tmp_path, version)
    ds = load_dataset(f"CIFAR100:{tmp_path}")
    assert ds.n_classes == 100 and ds.x_train.shape == (12, 3072) and ds.x_test.shape == (5, 3072)
    assert torch.equal(ds.y_train, torch.from_numpy(written["train"][1]).long())
    assert not torch.equal(ds.y_train, torch.from_numpy(written["train"][2]).long())


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}")
    assert "does not exist" in one_line(excinfo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path / 'empty'}")
    message = one_line(excinfo)
    assert "data_batch_1.bin" in message and "test_batch" in message and "cifar-10-batches-py" in message
    make_cifar10(tmp_path / "part", "binary")
    (tmp_path / "part" / "data_batch_4.bin").unlink()
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path / 'part'}")
    assert "lacks data_batch_4.bin" in one_line(excinfo)
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("cifar10:")
    assert "names no folder" in one_line(excinfo)
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset("cifar100")
    assert "cifar100:<dir>" in one_line(excinfo)


def test_truncated_binary_file_is_named_with_the_record_size(tmp_path):
    make_cifar10(tmp_path, "binary")
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    message = one_line(excinfo)
    assert "truncated" in message and "data_batch_3.bin" in message and "3073-byte records" in message
    make_cifar100(tmp_path / "c100", "binary")
    (tmp_path / "c100" / "test.bin").write_bytes(b"")
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar100:{tmp_path / 'c100'}")
    assert "test.bin" in one_line(excinfo) and "3074-byte records" in str(excinfo.value)


def test_labels_out_of_range_are_refused(tmp_path):
    make_cifar10(tmp_path, "binary")
    raw = bytearray((tmp_path / "test_batch.bin").read_bytes())
    raw[0] = 12
    (tmp_path / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    assert "test_batch.bin" in one_line(excinfo) and "[0, 10)" in str(excinfo.value)


def test_truncated_or_malformed_pickles_are_named(tmp_path):
    make_cifar10(tmp_path, "python")
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    assert "truncated or corrupt pickle file" in one_line(excinfo) and "data_batch_2" in str(excinfo.value)
    write_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    assert "'data' is uint8 (2, 100)" in one_line(excinfo)
    write_pickle(path, {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    assert "no 'labels' entry" in one_line(excinfo)
    write_pickle(path, [1, 2, 3])
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    assert "holds a list" in one_line(excinfo)


class _Hostile:
    """Unpickling this runs a shell command (what the restricted unpickler must prevent)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    make_cifar10(tmp_path, "python")
    marker = tmp_path / "pwned"
    hostile = {b"data": _Hostile(marker), b"labels": [0]}
    # the payload is live: a plain pickle.loads would run it
    pickle.loads(pickle.dumps(_Hostile(tmp_path / "control"), protocol=protocol))
    assert (tmp_path / "control").exists()
    write_pickle(tmp_path / "test_batch", hostile, protocol)
    with pytest.raises(HeterogradError) as excinfo:
        load_dataset(f"cifar10:{tmp_path}")
    message = one_line(excinfo)
    assert "refusing to load" in message and "test_batch" in message and f"{os.system.__module__}.system" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (pickle.dumps(eval), "asks for builtins.eval"),
        (b"c__builtin__\nexec\n(S'import os'\ntR.", "asks for __builtin__.exec"),  # protocol-0 global call
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", "expected 'latin1'"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(tmp_path, payload, fragment):
    path = tmp_path / "evil"
    path.write_bytes(payload)
    with pytest.raises(HeterogradError) as excinfo:
        cifar_mod.restricted_load(path)
    assert fragment in one_line(excinfo) and str(path) in str(excinfo.value)


# ---------------------------------------------------------------------------------------------------------
# Normalisation and augmentation


def test_channel_stats_and_normalisation():
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.randn(20, 3, 5, 5, generator=gen) * torch.tensor([1.0, 3.0, 0.5])[:, None, None]
        + torch.tensor([0.0, 5.0, -2.0])[:, None, None]
    )
    x[:, 2] = 7.0  # a constant channel keeps std 1
    mean, std = channel_stats(x)
    assert mean.shape == (3,) and std[2] == 1.0 and float(mean[2]) == pytest.approx(7.0)
    z = normalize_channels(x, mean, std)
    torch.testing.assert_close(z[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :2].std(dim=(0, 2, 3), correction=0), torch.ones(2), atol=1e-5, rtol=0)
    with pytest.raises(HeterogradError):
        normalize_channels(x, mean[:2], std[:2])


def test_flip_is_a_mirror_image():
    x = torch.randn(64, 2, 4, 5, generator=torch.Generator().manual_seed(1))
    out = random_hflip(x, torch.Generator().manual_seed(2))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48
    assert torch.equal(out[flipped.index(True)][:, :, 0], x[flipped.index(True)][:, :, -1])
    assert torch.equal(random_hflip(x, torch.Generator(), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, torch.Generator(), p=0.0), x)


def test_crop_is_a_shifted_window_of_the_padded_image():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, 6, 7, generator=gen)
    pad = 2
    out = random_crop(x, pad, torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    shifts = set()
    for b in range(len(x)):
        windows = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[b], padded[b, :, dy : dy + 6, dx : dx + 7])
        ]
        assert windows, f"image {b} is not a window of its padded image"
        shifts.add(windows[0])
    assert len(shifts) > 10  # offsets vary per image
    centre = crop_at(x, pad, torch.full((40,), pad), torch.full((40,), pad))
    assert torch.equal(centre, x)
    shifted = crop_at(x, pad, torch.full((40,), 0), torch.full((40,), 2 * pad))
    assert torch.equal(shifted[:, :, pad:, : 7 - pad], x[:, :, : 6 - pad, pad:])
    assert torch.count_nonzero(shifted[:, :, :pad]) == 0 and torch.count_nonzero(shifted[:, :, :, 7 - pad :]) == 0
    assert random_crop(x, 0, gen) is x


def test_augmentation_is_seeded_and_leaves_the_global_rng_alone():
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    augment = Augment(padding=4, flip=True)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = augment(x, torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), before)
    b = augment(x, torch.Generator().manual_seed(9))
    c = augment(x, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert torch.equal(Augment(padding=0, flip=False)(x, torch.Generator()), x)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: random_crop(torch.randn(4, 10), 2, torch.Generator()), "image batch (B, C, H, W)"),
        (lambda: random_crop(torch.randn(4, 1, 5, 5), -1, torch.Generator()), "padding must be"),
        (lambda: random_hflip(torch.randn(4, 1, 5, 5), 0), "needs a torch.Generator"),
        (lambda: random_hflip(torch.randn(4, 1, 5, 5), torch.Generator(), p=2.0), "probability"),
    ],
)
def test_augmentation_errors(call, fragment):
    with pytest.raises(HeterogradError) as excinfo:
        call()
    assert fragment in one_line(excinfo)


def test_a_training_loop_over_augmented_cifar_batches(tmp_path):
    make_cifar10(tmp_path, "binary", n=8)
    ds = load_dataset(f"cifar10:{tmp_path}", image=True)
    model = make_model("resnet20", ds.input_shape, ds.n_classes, seed=0)
    augment, gen = Augment(), torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = 0
    for xb, yb in iterate_minibatches(ds.x_train, ds.y_train, 16, generator=gen):
        loss = torch.nn.functional.cross_entropy(model(augment(xb, gen)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(xb)
        assert torch.isfinite(loss)
    assert seen == 40


@pytest.mark.slow
@pytest.mark.needs_data("fashion-mnist")
def test_the_readme_example_runs():
    """docs/models.md's LeNet-5 example, as printed there (about 15 s on one core)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(encoding="utf-8")
    section = page.split("<!-- section: models and image data (example) -->")[1]
    code = section.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "docs/models.md", "exec"), namespace)
    assert namespace["acc"] > 0.5  # two epochs on 5,000 images: far above the 0.1 of chance
