"""Convolutional synapses (``Conv1d``, ``Conv2d``, any number of spatial dims torch supports).

``W`` ``(C_out, C_in/groups, *k)``, ``b`` ``(C_out,)``, ``B`` shaped like ``W``. Transport is the transposed
convolution of ``u`` with ``B``; the correlation is the weight-correlation of ``pre`` with ``post`` summed
over positions. Both come from ``aten.convolution_backward`` (one native call, with an output mask so that
nothing unneeded is computed), with ``B`` in the place of the weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import HeterogradError
from .base import Synapse

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _tuple(v: int | Sequence[int], d: int, what: str) -> tuple[int, ...]:
    t = (int(v),) * d if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != d:
        raise HeterogradError(f"conv {what} {v!r} does not match {d} spatial dimensions")
    return t


class Conv(Synapse):
    """Cross-correlation synapse with stride, zero padding, dilation and groups.

    Args:
        weight_shape: ``(C_out, C_in/groups, *k)``.
        stride: an int or one per spatial dimension.
        padding: an int or one per spatial dimension, or ``"valid"`` or ``"same"`` (symmetric only: every
            ``dilation·(k-1)`` must be even).
        dilation: an int or one per spatial dimension.
        groups: ``C_in`` and ``C_out`` are multiples of it; ``groups = C_in`` is depthwise.
    """

    kind = "conv"

    def __init__(
        self,
        weight_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ) -> None:
        self.weight_shape = tuple(int(s) for s in weight_shape)
        d = len(self.weight_shape) - 2
        if d not in _CONV:
            raise HeterogradError(f"conv weight shape {self.weight_shape} has {d} spatial dims; 1-3 are supported")
        self.dims = d
        self.stride = _tuple(stride, d, "stride")
        self.dilation = _tuple(dilation, d, "dilation")
        k = self.weight_shape[2:]
        if padding == "valid":
            padding = 0
        elif padding == "same":
            total = [dl * (kk - 1) for dl, kk in zip(self.dilation, k, strict=True)]
            if any(t % 2 for t in total) or any(s != 1 for s in self.stride):
                raise HeterogradError(
                    f"padding='same' with kernel {k}, dilation {self.dilation} pads asymmetrically; "
                    "give explicit integer padding"
                )
            padding = tuple(t // 2 for t in total)
        elif isinstance(padding, str):
            raise HeterogradError(f"unknown conv padding {padding!r}; use an int, 'valid' or 'same'")
        self.padding = _tuple(padding, d, "padding")
        self.groups = int(groups)

    def _args(self) -> tuple:
        return (None, list(self.stride), list(self.padding), list(self.dilation), False, [0] * self.dims, self.groups)

    def forward(self, h: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
        """``h`` ``(n, C_in, *S)`` -> ``p`` ``(n, C_out, *S')``."""
        return _CONV[self.dims](h, W, b, self.stride, self.padding, self.dilation, self.groups)

    def transport(self, u: Tensor, B: Tensor, pre: Tensor) -> Tensor:
        """``u`` ``(n, C_out, *S')`` -> ``conv_transpose(u, B)`` ``(n, C_in, *S)``."""
        dummy = pre if pre.dim() == self.dims + 2 else u.new_empty(()).expand(pre.shape)
        v, _, _ = torch.ops.aten.convolution_backward(u, dummy, B, *self._args(), [True, False, False])
        return v

    def correlation(self, post: Tensor, pre: Tensor, scale: float) -> Tensor:
        """``scale · Σ_{n, positions}`` weight-correlation of ``pre`` with ``post`` ``(C_out, C_in/g, *k)``."""
        return self.transport_and_correlation(post, None, pre, scale, False)[1]

    def transport_and_correlation(
        self, u: Tensor, B: Tensor | None, pre: Tensor, scale: float, need_transport: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Transport with ``B`` (when asked) and the correlation ``C(u, pre)`` in one native call."""
        v, C, _ = self.transport_correlation_bias(u, B, pre, scale, need_transport, False)
        return v, C

    def transport_correlation_bias(
        self, u: Tensor, B: Tensor | None, pre: Tensor, scale: float, need_transport: bool, need_bias: bool
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """As `transport_and_correlation`, plus `bias_correlation` from the same call when asked."""
        w = B if B is not None else u.new_empty(()).expand(self.weight_shape)
        args = list(self._args())
        if need_bias:
            args[0] = [self.weight_shape[0]]
        v, C, Cb = torch.ops.aten.convolution_backward(u, pre, w, *args, [need_transport, True, need_bias])
        if scale != 1.0:
            C.mul_(scale)
            if Cb is not None:
                Cb.mul_(scale)
        return v, C, Cb

    def bias_correlation(self, post: Tensor, scale: float) -> Tensor:
        dims = [0, *range(2, post.dim())]
        s = post.sum(dims)
        return s if scale == 1.0 else s.mul_(scale)

    def as_feedback(self, C: Tensor) -> Tensor:
        return C

    def as_forward(self, B: Tensor) -> Tensor:
        return B

    def __repr__(self) -> str:
        return (
            f"Conv(weight_shape={self.weight_shape}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups})"
        )
