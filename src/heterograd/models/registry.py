"""The model registry: `MODELS` and `make_model`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heterograd.errors import HeterogradError, unknown_choice
from heterograd.models._init import check_int, make_generator
from heterograd.models.lenet import lenet5
from heterograd.models.mlp import mlp
from heterograd.models.resnet import resnet20, resnet56


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        build: ``build(in_shape, num_classes, generator=..., **options) -> nn.Module``.
        options: the keyword options ``build`` accepts besides those three.
        summary: one line for listings.
    """

    build: Callable[..., nn.Module]
    options: tuple[str, ...]
    summary: str


def _mlp(
    in_shape: tuple[int, ...],
    num_classes: int,
    *,
    generator: torch.Generator,
    hidden: tuple[int, ...] | list[int] = (256, 256),
    activation: str = "relu",
) -> nn.Module:
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (int(hidden),)
    if not isinstance(hidden, tuple | list):
        raise HeterogradError(f"mlp hidden must be a list of widths, got {hidden!r}; pass e.g. hidden=(256, 256)")
    return mlp([math.prod(in_shape), *hidden, num_classes], activation, generator=generator)


#: Registered models by name. Every model maps ``(B, *in_shape)`` to ``(B, num_classes)``.
MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(
        _mlp,
        ("hidden", "activation"),
        "fully connected, flattens any input; hidden=(256, 256), activation='relu'",
    ),
    "lenet5": ModelEntry(
        lenet5,
        ("activation", "pooling"),
        "LeNet-5 for (C, 28, 28) or (C, 32, 32) images; activation='relu', pooling='max'",
    ),
    "resnet20": ModelEntry(
        resnet20, ("shortcut",), "CIFAR ResNet-20, 0.27M parameters; shortcut='A' (zero-pad) or 'B' (projection)"
    ),
    "resnet56": ModelEntry(
        resnet56, ("shortcut",), "CIFAR ResNet-56, 0.85M parameters; shortcut='A' (zero-pad) or 'B' (projection)"
    ),
}


def make_model(
    name: str,
    in_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    >>> model = make_model("lenet5", (1, 28, 28), 10, seed=0)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

    Args:
        name: a key of `MODELS` (case-insensitive).
        in_shape: shape of one input, e.g. ``dataset.input_shape``: ``(C, H, W)`` for the convolutional
            models, anything for ``mlp`` (it flattens).
        num_classes: number of outputs.
        seed: seed of the initial weights (``None``: 0); the same seed gives the same weights.
        generator: draw the initial weights from this ``torch.Generator`` instead (not with ``seed``).
        **options: the model's own options (see `MODELS`); one that the model does not take is an error.

    Returns:
        A plain ``nn.Module`` (float32 on CPU; move it with ``.to(device, dtype)``) mapping
        ``(B, *in_shape)`` to ``(B, num_classes)``.

    Raises:
        HeterogradError: unknown name or option, bad shape or option value.
    """
    entry = MODELS.get(name.lower()) if isinstance(name, str) else None
    if entry is None:
        raise unknown_choice("model", name, MODELS)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        takes = ", ".join(entry.options) or "no options"
        raise HeterogradError(f"option(s) {', '.join(unknown)} do not apply to model {name!r}; it takes {takes}")
    if (
        not isinstance(in_shape, tuple | list | torch.Size)
        or not in_shape
        or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in in_shape)
    ):
        raise HeterogradError(
            f"in_shape must be a non-empty tuple of positive ints (one input's shape, e.g. (1, 28, 28)), got "
            f"{in_shape!r}; pass dataset.input_shape"
        )
    num_classes = check_int(num_classes, "num_classes")
    gen = make_generator(seed, generator)
    return entry.build(tuple(int(n) for n in in_shape), num_classes, generator=gen, **options)
