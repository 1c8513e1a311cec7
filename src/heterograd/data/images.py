"""Image helpers for convolutional models: per-channel normalisation and seeded batch augmentation.

All functions work on image batches ``(B, C, H, W)`` already on their device, so a training loop applies
them per minibatch without a data-loader process:

>>> gen = torch.Generator().manual_seed(0)
>>> augment = Augment(padding=4, flip=True)
>>> xb = torch.randn(8, 3, 32, 32)
>>> augment(xb, gen).shape
torch.Size([8, 3, 32, 32])

Randomness comes only from the ``torch.Generator`` passed in: the same generator state gives the same
crops and flips, and the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heterograd.errors import HeterogradError

_STD_FLOOR = 1e-8


def _check_batch(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise HeterogradError(
            f"{what} needs an image batch (B, C, H, W), got {shape}; load images with "
            "load_dataset(name, image=True) or Dataset.images()"
        )
    return x


def _check_generator(generator: object, what: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise HeterogradError(
            f"{what} needs a torch.Generator for its randomness, got {type(generator).__name__}; pass e.g. "
            "torch.Generator().manual_seed(0)"
        )
    return generator


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of an image set.

    Args:
        x: images ``(N, C, H, W)``, typically the training set.

    Returns:
        ``(mean, std)``, each ``(C,)`` in ``x``'s dtype, computed in float64; a constant channel gets std 1.
    """
    x = _check_batch(x, "channel_stats")
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    std = torch.where(std < _STD_FLOOR, torch.ones_like(std), std)
    return mean.to(x.dtype), std.to(x.dtype)


def normalize_channels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean[c]) / std[c]`` per channel ``c``.

    Args:
        x: images ``(N, C, H, W)``.
        mean: ``(C,)`` per-channel mean, e.g. from `channel_stats` of the training set.
        std: ``(C,)`` per-channel standard deviation, likewise.

    Returns:
        A new tensor ``(N, C, H, W)``.
    """
    x = _check_batch(x, "normalize_channels")
    c = x.shape[1]
    if mean.shape != (c,) or std.shape != (c,):
        raise HeterogradError(
            f"normalize_channels: images have {c} channels but mean/std have shapes {tuple(mean.shape)} / "
            f"{tuple(std.shape)}; pass one mean and one std per channel"
        )
    return (x - mean.to(x)[:, None, None]) / std.to(x)[:, None, None]


def crop_at(x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Each image's ``H x W`` window at ``(top[b], left[b])`` of the image zero-padded by ``padding`` on all sides.

    Args:
        x: images ``(B, C, H, W)``.
        padding: zero border added on each side before cropping.
        top, left: ``(B,)`` integer offsets in ``[0, 2 * padding]`` (``padding`` = no shift).

    Returns:
        ``(B, C, H, W)``: ``out[b] == pad(x[b])[:, top[b]:top[b]+H, left[b]:left[b]+W]``.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = top.to(x.device)[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = left.to(x.device)[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices on dims 0, 2, 3 around a slice: the result is (B, H, W, C)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation: pad each image by ``padding`` zeros and crop a random ``H x W`` window.

    On normalised images the zero border is the training mean colour. Offsets are drawn independently per
    image, uniformly in ``[0, 2 * padding]`` on each axis.

    Args:
        x: images ``(B, C, H, W)``.
        padding: border width (e.g. 4 for CIFAR, 2 for 28x28 images); 0 returns ``x`` unchanged.
        generator: the only source of randomness.

    Returns:
        ``(B, C, H, W)``.
    """
    x = _check_batch(x, "random_crop")
    generator = _check_generator(generator, "random_crop")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise HeterogradError(f"random_crop: padding must be a non-negative integer, got {padding!r}; pass e.g. 4")
    if padding == 0:
        return x
    offsets = torch.randint(0, 2 * padding + 1, (2, x.shape[0]), generator=generator, device=generator.device)
    return crop_at(x, padding, offsets[0], offsets[1])


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (independently per image).

    Args:
        x: images ``(B, C, H, W)``.
        generator: the only source of randomness.
        p: flip probability in ``[0, 1]``.

    Returns:
        ``(B, C, H, W)``: ``out[b]`` is ``x[b]`` or ``x[b].flip(-1)``.
    """
    x = _check_batch(x, "random_hflip")
    generator = _check_generator(generator, "random_hflip")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise HeterogradError(f"random_hflip: p must be a probability in [0, 1], got {p!r}; pass e.g. 0.5")
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < p
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class Augment:
    """The standard CIFAR training augmentation: random crop with zero padding, then random horizontal flip.

    Attributes:
        padding: crop padding (0 disables the crop); 4 is the usual value for 32x32 images.
        flip: apply `random_hflip` with probability 0.5.

    Call it on each training minibatch ``(B, C, H, W)`` with a generator dedicated to augmentation; never
    on test data.
    """

    padding: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``x`` ``(B, C, H, W)``; draws crops, then flips, from ``generator``."""
        x = random_crop(x, self.padding, generator)
        return random_hflip(x, generator) if self.flip else x
