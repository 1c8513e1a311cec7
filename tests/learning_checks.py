"""What the learning tests compare with: the readout-only baseline, and a planted broken transport.

A test that says "X learns" must beat the same network with its hidden layers frozen (only the output layer
trains: the readout-only baseline) on the same data and seed, by a margin stated in the test. A planted
broken transport (the feedback to every hidden layer is zero: ``B = 0`` as transport) must fail that same
check; ``tests/test_learning_checks.py`` shows it once for each check.

Not a test module: the learning tests import it (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from heterograd.nn import plastic_layers


def synapse_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the converted synapses (not norm layers) of ``model``, in order."""
    return [(n, m) for n, m in plastic_layers(model) if m.plasticity.synapse is not None]  # type: ignore[union-attr]


def freeze_hidden(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` but the last synapse's (the readout); returns those left trainable.

    The readout-only baseline: the hidden layers keep their initial weights, the output layer learns.
    """
    _, readout = synapse_layers(model)[-1]
    keep = {id(p) for p in readout.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


class ZeroTransport:
    """A planted fault: the layer's transport reads as zero (``B = 0``), so no feedback crosses it.

    Plugs into :attr:`heterograd.nn.Plasticity.device` (the hook the hardware module uses for its reads);
    ``inner`` keeps a device model that was already attached, for its forward reads.
    """

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def read_forward(self, W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return (W, b) if self.inner is None else self.inner.read_forward(W, b)

    def read_feedback(self, M: Tensor) -> Tensor:
        return torch.zeros_like(M)


def plant_broken_transport(model: nn.Module) -> nn.Module:
    """Zero the transport of every synapse of a converted ``model`` (in place), so no hidden layer gets feedback.

    Rules that transport with ``B`` or ``W`` read a zero matrix at every step (a plastic ``B`` keeps learning,
    but what it transports is zero); ``dfa``'s direct matrices ``D`` are zeroed. The output layer still learns
    from the output error, as the readout-only baseline does.
    """
    for _, m in synapse_layers(model):
        pl: Any = m.plasticity
        if pl.direct is not None:
            if m.feedback is not None:  # the first layer keeps no D (its input takes no feedback)
                with torch.no_grad():
                    m.feedback.zero_()  # type: ignore[operator]
        else:
            pl.device = ZeroTransport(pl.device)
    return model
