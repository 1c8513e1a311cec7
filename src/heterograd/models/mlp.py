"""Multilayer perceptron as a plain ``nn.Sequential``."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from heterograd.errors import HeterogradError
from heterograd.models._init import activation as get_activation
from heterograd.models._init import check_int, global_rng_untouched, kaiming_, make_generator


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layout: ``flatten``, then ``fc1, act1, fc2, act2, ..., fcL`` (no activation after the last layer, which
    outputs logits or regression values). The leading ``nn.Flatten`` makes it accept flat inputs ``(B, D)``
    and images ``(B, C, H, W)`` alike, with ``D = C*H*W = sizes[0]``.

    Parameters: ``sum(sizes[i] * sizes[i+1] + sizes[i+1])``; e.g. ``mlp([784, 256, 256, 10])`` has
    269,322.

    Init: Kaiming normal (fan-in) with the activation's gain for hidden layers, gain 1 for the last layer;
    zero biases; drawn from ``generator`` or ``torch.Generator().manual_seed(seed)`` (seed 0 by default).

    Args:
        sizes: layer widths including input and output, at least two.
        activation: ``relu``, ``tanh``, ``sigmoid``, ``gelu`` or ``identity``.
        seed: source of the initial weights (or pass ``generator``, not both).
        generator: a ``torch.Generator`` for the initial weights, instead of ``seed``.

    Returns:
        ``nn.Sequential`` mapping ``(B, sizes[0])`` (or any ``(B, ...)`` with that many values) to
        ``(B, sizes[-1])``.
    """
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise HeterogradError(f"mlp sizes must list at least an input and an output width, got {sizes!r}")
    widths = [check_int(n, "every mlp width") for n in sizes]
    make_act, gain = get_activation(activation)
    gen = make_generator(seed, generator)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    with global_rng_untouched():
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=1):
            layers[f"fc{i}"] = nn.Linear(n_in, n_out)
            if i < len(widths) - 1:
                layers[f"act{i}"] = make_act()
    model = nn.Sequential(layers)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        kaiming_(layer, gain if i < len(linears) - 1 else "linear", gen)
    return model
