"""A small minGPT-style transformer built only from ``nn.Linear``, ``nn.Embedding`` and ``nn.LayerNorm``.

Token and position embeddings, pre-norm blocks of causal multi-head self-attention (``q, k, v`` from one
``nn.Linear``, softmax over earlier positions) and a GELU MLP, a final LayerNorm and a linear head. A plain
``nn.Module``: every parameter sits in a module that `heterograd.nn.convert` turns plastic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    """Sizes: ``vocab`` tokens, ``block`` positions, ``layers`` blocks, ``heads`` heads of ``dim / heads``."""

    vocab: int = 16
    block: int = 16
    layers: int = 2
    heads: int = 2
    dim: int = 32
    mlp_ratio: int = 4


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``(n, T, dim) -> (n, T, dim)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not a multiple of heads {cfg.heads}")
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        mask = torch.tril(torch.ones(cfg.block, cfg.block, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, cfg.block, cfg.block), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        hd = d // self.heads
        q, k, v = (t.view(n, T, self.heads, hd).transpose(1, 2) for t in (q, k, v))  # (n, heads, T, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(n, T, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; ``(n, T, dim)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.fc = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token indices ``(n, T)`` (``T <= block``) -> next-token logits ``(n, T, vocab)``.

    Example:
        >>> m = GPT(GPTConfig(vocab=10, block=8, layers=1, heads=2, dim=16))
        >>> m(torch.zeros(3, 8, dtype=torch.long)).shape
        torch.Size([3, 8, 10])
    """

    def __init__(self, cfg: GPTConfig, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if seed is not None:
            torch.manual_seed(seed)
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.block, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if self.cfg.block < T:
            raise ValueError(f"sequence length {T} exceeds the block size {self.cfg.block}")
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device)).unsqueeze(0)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Tensor,
    chars: int,
    *,
    block: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``chars`` tokens after ``prompt`` from a causal language model, one at a time.

    Args:
        model: maps ``(1, T)`` token ids (``T <= block``) to ``(1, T, V)`` logits.
        prompt: ``(P,)`` token ids (``P >= 1``); only its last ``block`` tokens are read.
        chars: how many tokens to draw.
        block: the longest context the model reads; the context is cut to the last ``block`` tokens.
        temperature: logits are divided by it before the softmax (below 1: more likely characters).
        generator: the seeded source of the draws (CPU).

    Returns:
        ``(chars,)`` the drawn token ids (token 0, the unknown token, is never drawn).
    """
    was_training = model.training
    model.eval()
    try:
        ids = prompt.reshape(1, -1).long()
        out = []
        for _ in range(chars):
            logits = model(ids[:, -block:])[0, -1].float().cpu() / temperature
            logits[0] = -math.inf
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt.to(ids.device).view(1, 1)], dim=1)
        return torch.tensor(out, dtype=torch.long)
    finally:
        model.train(was_training)
