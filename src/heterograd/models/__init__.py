"""Model zoo: plain ``torch.nn`` modules (usable without heterograd; :func:`heterograd.nn.convert` trains them)."""

from .transformer import GPT, Block, CausalSelfAttention, GPTConfig

__all__ = ["GPT", "Block", "CausalSelfAttention", "GPTConfig"]
