"""How word order enters the model: one module per `model.positional` choice.

`sinusoidal` and `learned` add a vector to each embedding (paper section 3.5);
`rope` rotates queries and keys inside self-attention instead (Su et al. 2021), so the
embedding side is a no-op; `none` gives the model no order at all (an ablation: the
encoder becomes permutation-equivariant).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * inv_freq)
        pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
        # A buffer, not a parameter: it is a function of the position, and it need not
        # be saved (persistent=False keeps checkpoints independent of max_len).
        self.register_buffer("pe", pe, persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # x: (B, T, d_model)
        end = offset + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence of length {end} exceeds model.max_len={self.max_len}")
        return x + self.pe[offset:end]


class LearnedPositions(nn.Module):
    """One trained vector per position (the paper's Table 3 row E)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # x: (B, T, d_model)
        end = offset + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence of length {end} exceeds model.max_len={self.max_len}")
        return x + self.embedding.weight[offset:end]


class NoPositions(nn.Module):
    """Adds nothing: used for `none`, and for `rope`, whose positions live in attention."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        end = offset + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence of length {end} exceeds model.max_len={self.max_len}")
        return x


class Rotary(nn.Module):
    """Rotary position embedding: rotate each (even, odd) pair of q/k features by pos * theta_i.

    The dot product of a rotated query at position m and key at n depends only on m - n,
    so self-attention sees relative order. Uses the "rotate half" layout (GPT-NeoX).
    """

    def __init__(self, d_k: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, d_k, 2).float() / d_k)
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (L, d_k/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, d_k)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # x: (B, h, T, d_k) -> same shape, rotated by its absolute position offset..offset+T
        T = x.size(-2)
        cos, sin = self.cos[offset : offset + T], self.sin[offset : offset + T]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class NoRotation(nn.Module):
    """Identity stand-in for `Rotary` when positions are added to the embeddings instead."""

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x


EMBEDDING_POSITIONS = {
    "sinusoidal": SinusoidalPositions,
    "learned": LearnedPositions,
    "rope": NoPositions,
    "none": NoPositions,
}
