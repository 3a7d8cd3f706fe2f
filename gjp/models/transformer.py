"""A pre-norm transformer encoder, the body of GeoJEPA's context encoder, target encoder
and predictor.

Each block: LayerNorm → multi-head self-attention (``scaled_dot_product_attention``, so
PyTorch picks the fused kernel on a GPU) → residual; LayerNorm → MLP (GELU) → residual.
Padding is a key mask: no token attends to a padded one, so a real token's output does
not depend on how much padding its batch has or what the padded slots hold. Optional
register tokens (learned, prepended, dropped from the output) give attention somewhere to
put what no token needs. A final LayerNorm. Imports torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TransformerConfig:
    dim: int = 384
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    registers: int = 0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), attend)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """``[B, T, dim]`` tokens and a ``[B, T]`` padding mask (True = padding) → ``[B, T, dim]``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.registers = nn.Parameter(torch.zeros(1, config.registers, config.dim)) if config.registers else None
        self.blocks = nn.ModuleList([Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.dim)
        if self.registers is not None:
            nn.init.trunc_normal_(self.registers, std=0.02)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.outputs(x, padding)[0]

    def outputs(self, x: torch.Tensor, padding: torch.Tensor | None = None,
                layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the output ``[B, T, dim]``, after the final norm; the residual stream after
        ``layer`` blocks, before any norm — ``x`` itself at 0 —, or None when not asked)."""
        b, t, _ = x.shape
        r = self.config.registers
        if r:
            x = torch.cat([self.registers.expand(b, -1, -1), x], dim=1)
            if padding is not None:
                padding = torch.cat([padding.new_zeros(b, r), padding], dim=1)
        # [B, 1, 1, T]: every query may attend to every real key
        attend = None if padding is None else ~padding[:, None, None, :]
        hidden = x if layer == 0 else None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, attend)
            if i == layer:
                hidden = x
        return self.norm(x)[:, r:], None if hidden is None else hidden[:, r:]
