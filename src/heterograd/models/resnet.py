"""CIFAR-style residual networks (He et al. 2016, section 4.2): ResNet-20, ResNet-56 and any ``6n + 2`` depth."""

from __future__ import annotations

import torch
from torch import nn

from heterograd.errors import HeterogradError, unknown_choice
from heterograd.models._init import check_image_shape, check_int, global_rng_untouched, kaiming_, make_generator

#: Shortcut options for blocks that change width or resolution (all other shortcuts are the identity).
SHORTCUTS = ("A", "B")
#: Channels of the three stages.
STAGE_WIDTHS = (16, 32, 64)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: parameter-free, subsample by ``stride`` and append zero channels.

    Maps ``(B, C_in, H, W)`` to ``(B, C_out, ceil(H/stride), ceil(W/stride))``: the first ``C_in`` output
    channels are ``x[:, :, ::stride, ::stride]``, the remaining ``C_out - C_in`` are zero.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise HeterogradError(f"a zero-pad shortcut cannot shrink {in_channels} channels to {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual sum.

    ``out = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``, shapes ``(B, C_in, H, W)`` ->
    ``(B, C_out, H/stride, W/stride)``. ``conv1`` carries the stride; convolutions have no bias (BatchNorm
    follows). The shortcut is ``nn.Identity`` when shape is kept, else `ZeroPadShortcut` (option A)
    or ``nn.Sequential(Conv2d 1x1 stride s, BatchNorm2d)`` (option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise unknown_choice("shortcut option", shortcut, SHORTCUTS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2``.

    Layout (shapes for a batch of ``B`` images ``(B, C, H, W)``; 32x32 shown)::

        stem: conv Conv2d(C, 16, 3, padding=1, bias=False), bn, relu   -> (B, 16, 32, 32)
        layer1: n BasicBlocks, 16 channels                             -> (B, 16, 32, 32)
        layer2: n BasicBlocks, 32 channels, the first with stride 2    -> (B, 32, 16, 16)
        layer3: n BasicBlocks, 64 channels, the first with stride 2    -> (B, 64, 8, 8)
        pool: global average (AdaptiveAvgPool2d(1)), flatten           -> (B, 64)
        fc: Linear(64, num_classes)                                    -> (B, num_classes)

    Any image size works (28x28 gives 28 -> 14 -> 7 before pooling). Build it with `resnet`,
    `resnet20` or `resnet56` for the seeded Kaiming initialisation; the bare constructor keeps
    PyTorch's default initialisation.
    """

    def __init__(self, in_channels: int, num_classes: int, n: int, shortcut: str) -> None:
        super().__init__()
        self.depth, self.shortcut_option = 6 * n + 2, shortcut
        self.conv = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        stages = []
        width = STAGE_WIDTHS[0]
        for i, out in enumerate(STAGE_WIDTHS):
            blocks = [BasicBlock(width, out, 1 if i == 0 else 2, shortcut)]
            blocks += [BasicBlock(out, out, 1, shortcut) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            width = out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        x = self.relu(self.bn(self.conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet(
    depth: int,
    in_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    shortcut: str = "A",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> ResNet:
    """CIFAR ResNet of any depth ``6n + 2`` (20, 32, 44, 56, 110, ...); see `ResNet` for the layout.

    Shortcuts (only the two blocks that double the width and halve the resolution differ; every other
    shortcut is the identity):

    - ``"A"`` (the paper's CIFAR choice): parameter-free; subsample the input by 2 and zero-pad the
      missing channels (`ZeroPadShortcut`).
    - ``"B"``: projection, a 1x1 stride-2 ``Conv2d`` (no bias) followed by ``BatchNorm2d`` (adds
      ``16*32 + 2*32 + 32*64 + 2*64 = 2,752`` parameters).

    Init: Kaiming normal (fan-in, ReLU gain) for convolutions, gain 1 for ``fc``, zero biases, BatchNorm
    weight 1 and bias 0; drawn from ``generator`` or ``torch.Generator().manual_seed(seed)`` (seed 0 by
    default).

    Args:
        depth: ``6n + 2`` with ``n >= 1``.
        in_shape: ``(C, H, W)``; 1 channel (MNIST-style) or 3 (CIFAR), any size.
        num_classes: outputs of ``fc``.
        shortcut: ``"A"`` or ``"B"``.
        seed: source of the initial weights (or pass ``generator``, not both).
        generator: a ``torch.Generator`` for the initial weights, instead of ``seed``.

    Returns:
        A `ResNet` mapping ``(B, C, H, W)`` to ``(B, num_classes)``.
    """
    depth = check_int(depth, "depth", 8)
    if (depth - 2) % 6:
        raise HeterogradError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    c, _, _ = check_image_shape(in_shape, f"resnet{depth}")
    num_classes = check_int(num_classes, "num_classes")
    if not isinstance(shortcut, str) or shortcut.upper() not in SHORTCUTS:
        raise unknown_choice("shortcut option", shortcut, SHORTCUTS)
    gen = make_generator(seed, generator)
    with global_rng_untouched():
        model = ResNet(c, num_classes, (depth - 2) // 6, shortcut.upper())
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kaiming_(module, "relu", gen)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    kaiming_(model.fc, "linear", gen)
    return model


def resnet20(
    in_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    shortcut: str = "A",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> ResNet:
    """ResNet-20 (n = 3 blocks per stage). Parameters with 10 classes and 3 input channels: 269,722 with
    option A, 272,474 with option B (1 input channel: 269,434 / 272,186). See `resnet`."""
    return resnet(20, in_shape, num_classes, shortcut=shortcut, seed=seed, generator=generator)


def resnet56(
    in_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    shortcut: str = "A",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> ResNet:
    """ResNet-56 (n = 9 blocks per stage). Parameters with 10 classes and 3 input channels: 853,018 with
    option A, 855,770 with option B (1 input channel: 852,730 / 855,482). See `resnet`."""
    return resnet(56, in_shape, num_classes, shortcut=shortcut, seed=seed, generator=generator)
