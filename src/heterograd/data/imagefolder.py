"""ImageNet-style folders of class subfolders (``--data imagefolder:<dir>``), read with Pillow, no torchvision.

Layout (the one ImageNet's ``train``/``val`` folders are usually rearranged into)::

    <dir>/train/<class>/*.jpg|.jpeg|.png|...
    <dir>/val/<class>/...          (or <dir>/test/<class>/...)

Class names are the subfolder names, sorted; label ``k`` is the ``k``-th. Every image is decoded to RGB,
resized so that its shorter side is ``size`` and centre-cropped to ``size x size`` (``imagefolder:<dir>@SIZE``,
default 32), and held in memory; the training set is normalised per channel with its own mean and std (the
test set with the same). The training transforms are seeded tensor operations on each minibatch
(`ResizedCropFlip`: random resized crop, then horizontal flip), run by the trainer with ``--augment``.

Memory: ``N x 3 x size²`` float32 values, e.g. 50000 images at 32 = 0.6 GB; ImageNet's 1.28 M images fit at
``@64`` (63 GB) but not at 224: full-resolution ImageNet needs a streaming loader, which this reader is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from heterograd.data.dataset import Dataset
from heterograd.data.images import _check_batch, _check_generator, channel_stats, normalize_channels, random_hflip
from heterograd.errors import HeterogradError

#: The ``--data`` prefix of an image folder.
IMAGEFOLDER_PREFIX = "imagefolder:"
#: File suffixes read as images (case-insensitive); other files in a class folder are ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
DEFAULT_SIZE = 32
#: The file order is shuffled with this seed (whatever the run's seed) before ``n_train``/``n_test`` are taken.
ORDER_SEED = 0


def parse_spec(name: str) -> tuple[Path, int]:
    """``imagefolder:<dir>`` or ``imagefolder:<dir>@SIZE`` -> ``(dir, size)``."""
    rest = name.strip()[len(IMAGEFOLDER_PREFIX) :].strip()
    size = DEFAULT_SIZE
    head, at, tail = rest.rpartition("@")
    if at and tail.strip().isdigit():
        rest, size = head, int(tail)
    if not rest:
        raise HeterogradError(
            "dataset 'imagefolder:' names no folder; pass imagefolder:<dir>, e.g. imagefolder:~/imagenet"
        )
    if not 8 <= size <= 512:
        raise HeterogradError(f"{name}: image size {size} is outside [8, 512]; pass e.g. imagefolder:<dir>@64")
    return Path(rest).expanduser(), size


def _split_dirs(root: Path, name: str) -> tuple[Path, Path]:
    if not root.is_dir():
        raise HeterogradError(f"{name}: no folder {root}; pass imagefolder:<dir> naming an existing folder")
    train = root / "train"
    test = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train.is_dir() or test is None:
        missing = "train/" if not train.is_dir() else "val/ (or test/)"
        raise HeterogradError(
            f"{name}: {root} has no {missing} subfolder; an image folder holds train/<class>/* and val/<class>/* "
            "(one folder per class)"
        )
    return train, test


def scan_split(directory: Path, name: str) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their labels and the sorted class names of one split folder ``<split>/<class>/*``."""
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise HeterogradError(
            f"{name}: {directory} holds no class subfolders; put each class's images in its own folder"
        )
    files: list[Path] = []
    labels: list[int] = []
    for k, cls in enumerate(classes):
        found = sorted(p for p in (directory / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise HeterogradError(
                f"{name}: class folder {directory / cls} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images "
                "or remove the folder"
            )
        files += found
        labels += [k] * len(found)
    return files, labels, classes


def decode_image(path: Path, size: int) -> torch.Tensor:
    """One image as uint8 ``(3, size, size)``: RGB, shorter side resized to ``size`` (bilinear), centre crop."""
    try:
        from PIL import Image
    except ImportError:
        raise HeterogradError("reading image folders needs Pillow; pip install pillow") from None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise HeterogradError(f"cannot read image {path} ({exc}); remove or replace the file") from None
    return data.reshape(size, size, 3).permute(2, 0, 1).contiguous()


def _take(files: list[Path], labels: list[int], n: int | None) -> tuple[list[Path], list[int]]:
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(ORDER_SEED)).tolist()
    if n is not None:
        order = order[:n]
    return [files[i] for i in order], [labels[i] for i in order]


def load_imagefolder(name: str, *, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """Load ``imagefolder:<dir>[@SIZE]`` (see the module docstring) as a `Dataset`.

    Returns:
        Inputs ``(N, 3·size²)`` float32 (flat layout; ``image_shape`` ``(3, size, size)``), normalised per
        channel with the training set's statistics; labels ``(N,)`` int64. ``n_train``/``n_test`` take that many
        images of each split after a fixed shuffle (seed `ORDER_SEED`), so a subset mixes the classes.

    Raises:
        HeterogradError: missing folder or split, no class folders, an empty class, different classes in the
            two splits, an unreadable image (named), Pillow missing.
    """
    root, size = parse_spec(name)
    train_dir, test_dir = _split_dirs(root, name)
    f_tr, y_tr, classes = scan_split(train_dir, name)
    f_te, y_te, test_classes = scan_split(test_dir, name)
    if test_classes != classes:
        extra = sorted(set(test_classes) ^ set(classes))[:5]
        raise HeterogradError(
            f"{name}: {train_dir} and {test_dir} hold different class folders (e.g. {', '.join(extra)}); both splits "
            "need the same classes"
        )
    f_tr, y_tr = _take(f_tr, y_tr, n_train)
    f_te, y_te = _take(f_te, y_te, n_test)
    x_tr = torch.stack([decode_image(p, size) for p in f_tr]).float().div_(255)
    x_te = torch.stack([decode_image(p, size) for p in f_te]).float().div_(255)
    mean, std = channel_stats(x_tr)
    x_tr, x_te = normalize_channels(x_tr, mean, std), normalize_channels(x_te, mean, std)
    shape = (3, size, size)
    return Dataset(
        name.strip(),
        x_tr.reshape(len(f_tr), -1),
        torch.tensor(y_tr, dtype=torch.int64),
        x_te.reshape(len(f_te), -1),
        torch.tensor(y_te, dtype=torch.int64),
        len(classes),
        shape,
    )


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random box of each image and resize it back to ``(H, W)`` (bilinear), all images at once.

    The box's area is a fraction ``U(scale)`` of the image, its aspect ratio ``exp(U(log ratio))`` (clipped to the
    image), its position uniform; the crop is resampled with ``grid_sample`` (one batched call).

    Args:
        x: images ``(B, C, H, W)``.
        generator: the only source of randomness.

    Returns:
        ``(B, C, H, W)``.
    """
    x = _check_batch(x, "random_resized_crop")
    generator = _check_generator(generator, "random_resized_crop")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi <= 1 or not 0 < ratio[0] <= ratio[1]:
        need = "0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]"
        raise HeterogradError(f"random_resized_crop: need {need}, got scale {scale}, ratio {ratio}")
    B, _, H, W = x.shape
    u = torch.rand(4, B, generator=generator, device=generator.device).to(x.device, torch.float32)
    area = lo + (hi - lo) * u[0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    aspect = torch.exp(log_r)  # box width / height, in units of the image's own width / height
    fw = torch.sqrt(area * aspect).clamp(max=1.0)  # box width as a fraction of W
    fh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - fw) * (2 * u[2] - 1)  # box centre in [-1, 1] coordinates, box inside the image
    cy = (1 - fh) * (2 * u[3] - 1)
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw, cx, fh, cy
    grid = F.affine_grid(theta, [B, x.shape[1], H, W], align_corners=False).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class ResizedCropFlip:
    """The ImageNet training augmentation as tensor operations: `random_resized_crop`, then a horizontal flip.

    Attributes:
        scale: area fraction range of the crop box; ``(0.08, 1.0)`` as in the usual ImageNet recipe.
        flip: mirror each image with probability 0.5.

    Call it on each training minibatch ``(B, C, H, W)`` (already normalised: crop and flip commute with a
    per-channel normalisation) with a generator dedicated to augmentation.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``x`` ``(B, C, H, W)``; draws the boxes, then the flips, from ``generator``."""
        x = random_resized_crop(x, generator, self.scale)
        return random_hflip(x, generator) if self.flip else x


__all__ = [
    "IMAGEFOLDER_PREFIX",
    "ResizedCropFlip",
    "decode_image",
    "load_imagefolder",
    "parse_spec",
    "random_resized_crop",
    "scan_split",
]
