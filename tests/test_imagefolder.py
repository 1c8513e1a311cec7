"""``--data imagefolder:<dir>``: an ImageNet-style folder of class subfolders, read with Pillow (generated here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heterograd.data import load_dataset
from heterograd.data.imagefolder import ResizedCropFlip, decode_image, random_resized_crop
from heterograd.errors import HeterogradError

PIL = pytest.importorskip("PIL.Image")

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def _write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<split>/<class>/*.png|jpg``: small images of varied sizes, each class tinted with its colour."""
    g = torch.Generator().manual_seed(seed)
    for split, n in per_class.items():
        for k, (cls, colour) in enumerate(COLOURS.items()):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = 12 + 2 * i, 10 + (i % 3)  # not square, not all one size
                noise = torch.randint(0, 40, (h, w, 3), generator=g)
                px = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                ext = ".png" if (i + k) % 2 else ".jpg"
                PIL.fromarray(px, "RGB").save(d / f"img{i}{ext}")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return _write_folder(tmp_path / "imgs", {"train": 6, "val": 2})


def test_reads_classes_labels_and_normalises(folder):
    ds = load_dataset(f"imagefolder:{folder}@16")
    assert ds.image_shape == (3, 16, 16) and ds.n_classes == 3
    assert ds.x_train.shape == (18, 3 * 16 * 16) and ds.x_test.shape == (6, 3 * 16 * 16)
    assert sorted(ds.y_train.tolist()) == [0] * 6 + [1] * 6 + [2] * 6  # cat, dog, fox: sorted names
    x = ds.images().x_train
    mean = x.transpose(0, 1).reshape(3, -1).mean(1)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)  # per-channel normalised on the training set
    # the class colour survives: cat images are reddest
    red_minus_green = (x[:, 0] - x[:, 1]).mean((1, 2))
    assert red_minus_green[ds.y_train == 0].min() > red_minus_green[ds.y_train == 1].max()


def test_subset_mixes_classes_and_is_fixed(folder):
    a = load_dataset(f"imagefolder:{folder}", n_train=6, n_test=3)
    b = load_dataset(f"imagefolder:{folder}", n_train=6, n_test=3, seed=5)
    assert a.x_train.shape == (6, 3 * 32 * 32)  # default size 32
    assert len(set(a.y_train.tolist())) > 1  # not the first class only
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path):
    img = torch.zeros(10, 30, 3, dtype=torch.uint8)
    img[:, 12:18] = 255  # a white band inside the middle third (the part a centre crop keeps)
    PIL.fromarray(img.numpy(), "RGB").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png", 8)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    assert out[:, :, 3:5].float().mean() > 200  # the band, in the middle
    assert out[:, :, 0].float().mean() < 60 and out[:, :, 7].float().mean() < 60  # the outer thirds are cut


def test_random_resized_crop_and_flip_are_seeded_and_keep_the_shape():
    x = torch.randn(5, 3, 16, 16)
    a = ResizedCropFlip()(x, torch.Generator().manual_seed(1))
    b = ResizedCropFlip()(x, torch.Generator().manual_seed(1))
    c = ResizedCropFlip()(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    full = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(full, x, atol=1e-5)  # the whole image, unchanged
    with pytest.raises(HeterogradError, match="scale"):
        random_resized_crop(x, torch.Generator(), scale=(0.5, 0.1))


def _error(name: str) -> str:
    with pytest.raises(HeterogradError) as exc:
        load_dataset(name)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_one_clear_error_per_bad_input(tmp_path, folder):
    assert "names no folder" in _error("imagefolder:")
    assert "no folder" in _error(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "flat").mkdir()
    assert "no train/ subfolder" in _error(f"imagefolder:{tmp_path / 'flat'}")
    (tmp_path / "flat" / "train").mkdir()
    assert "no val/ (or test/) subfolder" in _error(f"imagefolder:{tmp_path / 'flat'}")
    (tmp_path / "flat" / "val").mkdir()
    assert "no class subfolders" in _error(f"imagefolder:{tmp_path / 'flat'}")
    assert "outside [8, 512]" in _error(f"imagefolder:{folder}@4")
    (folder / "val" / "owl").mkdir()
    png = next((folder / "val" / "cat").glob("*.png"))
    (folder / "val" / "owl" / "ok.png").write_bytes(png.read_bytes())
    assert "different class folders" in _error(f"imagefolder:{folder}")
    (folder / "train" / "owl").mkdir()
    (folder / "train" / "owl" / "notes.txt").write_text("no image")
    assert "holds no images" in _error(f"imagefolder:{folder}")
    (folder / "train" / "owl" / "broken.jpg").write_bytes(b"not a jpeg")
    msg = _error(f"imagefolder:{folder}")
    assert "cannot read image" in msg and "broken.jpg" in msg


def test_trains_a_converted_model_with_resized_crop_augmentation(folder, tmp_path):
    from heterograd import TrainConfig
    from heterograd.data.imagefolder import ResizedCropFlip as RCF
    from heterograd.train_module import ModuleTrainer

    cfg = TrainConfig(
        data=f"imagefolder:{folder}@28", model="lenet5", rule="kp", epochs=1, batch_size=6, augment=True,
        probes=False,
    )  # fmt: skip
    tr = ModuleTrainer(cfg)
    assert isinstance(tr.augment, RCF)
    summary = tr.fit(None, progress=False).summary
    assert summary["steps"] == 3 and not summary["diverged"]
