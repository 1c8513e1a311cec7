"""The `Dataset` container and a seeded minibatch iterator."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from heterograd.errors import HeterogradError

Task = Literal["classification", "regression"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of tensors, ready for training.

    Attributes:
        name: the name the dataset was loaded under (e.g. ``"digits"``).
        x_train: inputs, floating point (float32 from the loaders): shape ``(N_train, D)`` (flat layout,
            the default and what the ``Circuit`` engine takes) or ``(N_train, C, H, W)`` (image layout, for
            convolutional models; only with ``image_shape`` equal to ``(C, H, W)``).
        y_train: class labels, shape ``(N_train,)`` int64 in ``[0, n_classes)``, for classification;
            targets, shape ``(N_train, K)`` floating point, for regression.
        x_test: inputs, shape ``(N_test, D)`` or ``(N_test, C, H, W)``, in the same layout as ``x_train``.
        y_test: labels ``(N_test,)`` or targets ``(N_test, K)``, like ``y_train``.
        n_classes: number of classes, or ``None`` for regression.
        image_shape: ``(C, H, W)`` when every input is an image (channels first), else ``None``. In the flat
            layout a row holds the image's ``C*H*W`` values in channel-major, row-major order, so
            ``x.reshape(N, C, H, W)`` recovers the images; `images` and `flat` switch layouts
            without copying.

    The shapes and dtypes are checked on construction. Instances compare by identity (tensors have no
    single truth value), and ``repr`` shows shapes rather than data.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self._check_image_shape()
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise HeterogradError(
                    f"dataset {self.name!r}: x_{split} and y_{split} must be torch tensors; "
                    "convert them with torch.as_tensor"
                )
            image_layout = self.image_shape is not None and tuple(x.shape[1:]) == self.image_shape
            if (x.ndim != 2 and not image_layout) or not x.is_floating_point():
                layouts = (
                    "(N, D)" if self.image_shape is None else f"(N, D) or (N, {', '.join(map(str, self.image_shape))})"
                )
                raise HeterogradError(
                    f"dataset {self.name!r}: x_{split} must be a floating-point tensor {layouts}, got "
                    f"shape {tuple(x.shape)} dtype {x.dtype}; flatten the inputs and cast them to float32"
                )
            if y.shape[:1] != x.shape[:1]:
                raise HeterogradError(
                    f"dataset {self.name!r}: x_{split} has {x.shape[0]} rows but y_{split} has "
                    f"{y.shape[0] if y.ndim else 0}; give one target per input"
                )
        for what in ("x_train", "x_test", "y_train", "y_test"):
            t: torch.Tensor = getattr(self, what)
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
                raise HeterogradError(
                    f"dataset {self.name!r}: {what} holds NaN or infinite values in {int(bad.sum())} rows (first: row "
                    f"{int(bad.nonzero()[0, 0])}); drop or impute those examples before training"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise HeterogradError(
                f"dataset {self.name!r}: x_train has examples of shape {tuple(self.x_train.shape[1:])} but x_test "
                f"has {tuple(self.x_test.shape[1:])}; use the same feature layout for both splits"
            )
        if self.n_classes is None:
            self._check_regression_targets()
        else:
            self._check_class_labels()

    def _check_image_shape(self) -> None:
        shape = self.image_shape
        if shape is None:
            return
        if (
            not isinstance(shape, tuple)
            or len(shape) != 3
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)
        ):
            raise HeterogradError(
                f"dataset {self.name!r}: image_shape must be a tuple of three positive ints (C, H, W), got "
                f"{shape!r}; pass e.g. (1, 28, 28) or None"
            )
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            if isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] != math.prod(shape):
                raise HeterogradError(
                    f"dataset {self.name!r}: x_{split} has {x.shape[1]} features but image_shape {shape} holds "
                    f"{math.prod(shape)} values; pass the image_shape the rows were flattened from"
                )

    def _check_regression_targets(self) -> None:
        for split, y in (("train", self.y_train), ("test", self.y_test)):
            if y.ndim != 2 or not y.is_floating_point():
                raise HeterogradError(
                    f"dataset {self.name!r}: regression targets y_{split} must be a 2-D float tensor "
                    f"(N, K), got shape {tuple(y.shape)} dtype {y.dtype}; reshape them or set n_classes"
                )
        if self.y_train.shape[1] != self.y_test.shape[1]:
            raise HeterogradError(
                f"dataset {self.name!r}: y_train has {self.y_train.shape[1]} targets per example but y_test "
                f"has {self.y_test.shape[1]}; use the same targets for both splits"
            )

    def _check_class_labels(self) -> None:
        n_classes = self.n_classes
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise HeterogradError(
                f"dataset {self.name!r}: n_classes must be a positive integer or None, got {n_classes!r}; "
                "pass the number of classes (None for regression)"
            )
        for split, y in (("train", self.y_train), ("test", self.y_test)):
            if y.ndim != 1 or y.dtype != torch.int64:
                raise HeterogradError(
                    f"dataset {self.name!r}: class labels y_{split} must be a 1-D int64 tensor, got shape "
                    f"{tuple(y.shape)} dtype {y.dtype}; convert them with .long()"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
                raise HeterogradError(
                    f"dataset {self.name!r}: y_{split} has labels in [{int(y.min())}, {int(y.max())}] but "
                    f"n_classes is {n_classes}; labels must lie in [0, n_classes)"
                )

    @property
    def input_dim(self) -> int:
        """Number of input values ``D`` per example (``C*H*W`` for images, in either layout)."""
        return math.prod(self.x_train.shape[1:])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input as stored: ``(D,)`` in the flat layout, ``(C, H, W)`` in the image layout."""
        return tuple(int(n) for n in self.x_train.shape[1:])

    def images(self) -> Dataset:
        """The same data with inputs shaped ``(N, C, H, W)``, for convolutional models (a view, no copy).

        Raises:
            HeterogradError: the dataset has no ``image_shape`` (its inputs are not images).
        """
        if self.image_shape is None:
            raise HeterogradError(
                f"dataset {self.name!r} holds feature vectors, not images (no image_shape); use an image dataset "
                "(fashion-mnist, idx:<dir>, cifar10:<dir>, cifar100:<dir>) or a model that takes flat inputs"
            )
        n_tr, n_te = self.x_train.shape[0], self.x_test.shape[0]
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(n_tr, *self.image_shape),
            x_test=self.x_test.reshape(n_te, *self.image_shape),
        )

    def flat(self) -> Dataset:
        """The same data with inputs shaped ``(N, D)`` (a view when the inputs are contiguous)."""
        if self.x_train.ndim == 2:
            return self
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(self.x_train.shape[0], -1),
            x_test=self.x_test.reshape(self.x_test.shape[0], -1),
        )

    @property
    def output_dim(self) -> int:
        """Number of network outputs: ``n_classes`` for classification, ``K`` for regression."""
        if self.n_classes is not None:
            return self.n_classes
        return int(self.y_train.shape[1])

    @property
    def task(self) -> Task:
        """``"classification"`` when ``n_classes`` is set, otherwise ``"regression"``."""
        return "regression" if self.n_classes is None else "classification"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Dataset:
        """Return a copy on ``device`` with inputs (and regression targets) cast to ``dtype``.

        Class labels move to ``device`` but stay int64. With both arguments ``None``, or when every tensor is
        already on ``device`` in ``dtype``, the dataset itself is returned (it was validated when it was made;
        validating 60,000 images again cost a CLI epoch 0.3-0.5 s).
        """
        if device is None and dtype is None:
            return self
        if dtype is not None and not dtype.is_floating_point:
            raise HeterogradError(
                f"Dataset.to: dtype must be a floating-point dtype, got {dtype}; use e.g. torch.float32"
            )

        def move_x(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        def move_y(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)

        old = (self.x_train, self.y_train, self.x_test, self.y_test)
        new = (move_x(self.x_train), move_y(self.y_train), move_x(self.x_test), move_y(self.y_test))
        if all(a is b for a, b in zip(old, new, strict=True)):  # already there: no copy, no second validation
            return self
        return dataclasses.replace(self, x_train=new[0], y_train=new[1], x_test=new[2], y_test=new[3])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, x_train={tuple(self.x_train.shape)}, "
            f"y_train={tuple(self.y_train.shape)}, x_test={tuple(self.x_test.shape)}, "
            f"y_test={tuple(self.y_test.shape)}, n_classes={self.n_classes}, dtype={self.x_train.dtype}, "
            f"device={self.x_train.device}"
            + ("" if self.image_shape is None else f", image_shape={self.image_shape}")
            + ")"
        )


def iterate_minibatches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield one epoch of ``(xb, yb)`` minibatches.

    Args:
        x: inputs, shape ``(N, ...)``.
        y: targets, shape ``(N, ...)``.
        batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
        generator: source of the shuffling permutation (``torch.randperm``); the same generator state
            gives the same batches. It is not used when ``shuffle`` is false.
        shuffle: visit the examples in a random order (otherwise in storage order).
        drop_last: skip a final batch smaller than ``batch_size``.

    Yields:
        ``(xb, yb)`` with shapes ``(B, ...)``; every example appears exactly once per epoch (bar the
        dropped remainder).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HeterogradError(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. 64")
    n = int(x.shape[0]) if x.ndim else 0
    if x.ndim == 0 or y.ndim == 0 or y.shape[0] != n:
        raise HeterogradError(
            f"iterate_minibatches: x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; "
            "give both the same number of rows"
        )
    if shuffle:
        order: torch.Tensor | None = torch.randperm(n, generator=generator, device=generator.device)
        order = order.to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx.to(y.device)]
