"""LeNet-5 for 28x28 (MNIST, Fashion-MNIST) and 32x32 (CIFAR) images, as a plain ``nn.Sequential``."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from heterograd.errors import HeterogradError, unknown_choice
from heterograd.models._init import activation as get_activation
from heterograd.models._init import check_image_shape, check_int, global_rng_untouched, kaiming_, make_generator

#: Pooling name -> 2x2, stride-2 pooling module.
POOLING = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def lenet5(
    in_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    *,
    activation: str = "relu",
    pooling: str = "max",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) in its usual modern form.

    Layout (shapes for a batch of ``B``)::

        conv1  Conv2d(C, 6, 5, padding=p)   (B, C, S, S) -> (B, 6, 28, 28)   p = 2 if S == 28 else 0
        act1, pool1 (2x2, stride 2)                      -> (B, 6, 14, 14)
        conv2  Conv2d(6, 16, 5)                          -> (B, 16, 10, 10)
        act2, pool2                                      -> (B, 16, 5, 5)
        flatten                                          -> (B, 400)
        fc1 Linear(400, 120), act3, fc2 Linear(120, 84), act4, fc3 Linear(84, num_classes) -> (B, num_classes)

    A 28x28 input is zero-padded by 2 inside ``conv1`` (``padding=2``), which is the same as padding the image
    to the 32x32 that the original network took; a 32x32 input (CIFAR) is used as is.

    Choices: ReLU and max pooling by default (the common modern variant); ``activation="tanh"`` with
    ``pooling="avg"`` is closer to the 1998 network, whose scaled tanh, trainable subsampling, partial
    C3 connectivity and RBF output layer are not reproduced. All convolutions and linear layers have biases.

    Parameters (10 classes): 61,706 for 1 input channel, 62,006 for 3
    (conv1 ``150C + 6``, conv2 2,416, fc1 48,120, fc2 10,164, fc3 850).

    Init: Kaiming normal (fan-in) with the activation's gain, gain 1 for ``fc3``, zero biases, drawn from
    ``generator`` or ``torch.Generator().manual_seed(seed)`` (seed 0 by default).

    Args:
        in_shape: ``(C, S, S)`` with ``S`` 28 or 32, any number of channels ``C``.
        num_classes: outputs of ``fc3``.
        activation: ``relu``, ``tanh``, ``sigmoid``, ``gelu`` or ``identity``.
        pooling: ``max`` or ``avg``.
        seed: source of the initial weights (or pass ``generator``, not both).
        generator: a ``torch.Generator`` for the initial weights, instead of ``seed``.

    Returns:
        ``nn.Sequential`` mapping ``(B, C, S, S)`` to logits ``(B, num_classes)``.
    """
    c, h, w = check_image_shape(in_shape, "lenet5")
    if h != w or h not in (28, 32):
        raise HeterogradError(
            f"lenet5 takes 28x28 or 32x32 images, got in_shape {tuple(in_shape)}; resize the images or use "
            "resnet20/resnet56, which take any size"
        )
    num_classes = check_int(num_classes, "num_classes")
    make_act, gain = get_activation(activation)
    if not isinstance(pooling, str) or pooling.lower() not in POOLING:
        raise unknown_choice("pooling", pooling, POOLING)
    pool = POOLING[pooling.lower()]
    gen = make_generator(seed, generator)
    with global_rng_untouched():
        model = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(c, 6, 5, padding=2 if h == 28 else 0),
                act1=make_act(),
                pool1=pool(2, 2),
                conv2=nn.Conv2d(6, 16, 5),
                act2=make_act(),
                pool2=pool(2, 2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * 5 * 5, 120),
                act3=make_act(),
                fc2=nn.Linear(120, 84),
                act4=make_act(),
                fc3=nn.Linear(84, num_classes),
            )
        )
    for name in ("conv1", "conv2", "fc1", "fc2"):
        kaiming_(getattr(model, name), gain, gen)
    kaiming_(model.fc3, "linear", gen)
    return model
