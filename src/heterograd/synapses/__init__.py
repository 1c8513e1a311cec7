"""Synapse types: a plastic connection is a bilinear operator with three operations.

* forward ``p = W ⋆ h`` (time t),
* transport ``v = B ⋆ᵀ u`` (time t': the feedback sent to the presynaptic side through ``B``),
* correlation ``C(post, pre)`` (``W``'s shape: ``scale · Σ_{batch, positions} post ⊗ pre``).

Rules are written over these operations (`heterograd.rules`), so one rule serves every synapse
type: the dense matrix of the `Circuit` engine, ``Conv1d`` / ``Conv2d``
(stride, padding, dilation, groups) and embedding lookups of converted ``torch.nn`` models.
Pure torch, no autograd.
"""

from .base import Synapse
from .conv import Conv
from .dense import DENSE, Dense
from .embedding import Embedding

__all__ = ["DENSE", "Conv", "Dense", "Embedding", "Synapse"]
