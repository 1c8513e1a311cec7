"""Seeded construction and Kaiming initialisation shared by the model factories."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from heterograd.errors import HeterogradError, unknown_choice

M = TypeVar("M", bound=nn.Module)

#: Activation name -> (module factory, Kaiming gain name used to initialise the layer feeding it).
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "relu": (nn.ReLU, "relu"),
    "tanh": (nn.Tanh, "tanh"),
    "sigmoid": (nn.Sigmoid, "sigmoid"),
    "gelu": (nn.GELU, "relu"),
    "identity": (nn.Identity, "linear"),
}


def activation(name: object) -> tuple[Callable[[], nn.Module], str]:
    """``(module factory, Kaiming nonlinearity)`` for an activation name; clear error for unknown names."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise unknown_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name.lower()]


def make_generator(seed: object = None, generator: object = None) -> torch.Generator:
    """The generator a factory draws its initial weights from.

    Args:
        seed: integer in ``[0, 2**63)``; ``None`` (with no ``generator``) means seed 0, so construction is
            always reproducible.
        generator: a ``torch.Generator`` to draw from instead (advanced by the draws).

    Raises:
        HeterogradError: both given, or either of the wrong type.
    """
    if generator is not None:
        if seed is not None:
            raise HeterogradError("pass seed= or generator=, not both; the generator alone fixes the weights")
        if not isinstance(generator, torch.Generator):
            raise HeterogradError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; pass e.g. "
                "torch.Generator().manual_seed(0)"
            )
        return generator
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise HeterogradError(f"seed must be an integer in [0, 2**63), got {seed!r}; pass e.g. seed=0")
    return torch.Generator().manual_seed(int(seed))


@contextlib.contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Build modules inside this block: PyTorch's default initialisers draw from the global CPU RNG, whose
    state is restored on exit (the factories then re-initialise every parameter from their own generator)."""
    with torch.random.fork_rng(devices=[]):
        yield


def kaiming_(layer: nn.Linear | nn.Conv2d, nonlinearity: str, generator: torch.Generator) -> None:
    """He et al. (2015) normal init ``N(0, gain^2 / fan_in)`` of the weight, zero bias, in place."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=nonlinearity, generator=generator)  # type: ignore[arg-type]
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_int(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise HeterogradError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_image_shape(in_shape: object, model: str) -> tuple[int, int, int]:
    """``in_shape`` as ``(C, H, W)`` positive ints, or a clear error."""
    if (
        not isinstance(in_shape, tuple | list)
        or len(in_shape) != 3
        or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in in_shape)
    ):
        raise HeterogradError(
            f"{model} takes images: in_shape must be (C, H, W), got {in_shape!r}; load the data with "
            "load_dataset(name, image=True) and pass dataset.input_shape"
        )
    c, h, w = (int(n) for n in in_shape)
    return c, h, w
