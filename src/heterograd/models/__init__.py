"""Model zoo: plain ``torch.nn`` modules, usable with or without heterograd.

>>> from heterograd.models import make_model
>>> model = make_model("resnet20", (3, 32, 32), 10, seed=0)

Every parametrised layer of the image models is ``nn.Linear``, ``nn.Conv2d`` or ``nn.BatchNorm2d``; the rest are
activations, pooling, flattening and residual sums. The minGPT-style `GPT` adds ``nn.Embedding`` and
``nn.LayerNorm``. Construction is seeded (``seed=`` or ``generator=``) and leaves the global RNG alone.
"""

from heterograd.models._init import count_parameters
from heterograd.models.lenet import lenet5
from heterograd.models.mlp import mlp
from heterograd.models.registry import MODELS, ModelEntry, make_model
from heterograd.models.resnet import BasicBlock, ResNet, ZeroPadShortcut, resnet, resnet20, resnet56
from heterograd.models.transformer import GPT, Block, CausalSelfAttention, GPTConfig

__all__ = [
    "GPT",
    "MODELS",
    "BasicBlock",
    "Block",
    "CausalSelfAttention",
    "GPTConfig",
    "ModelEntry",
    "ResNet",
    "ZeroPadShortcut",
    "count_parameters",
    "lenet5",
    "make_model",
    "mlp",
    "resnet",
    "resnet20",
    "resnet56",
]
