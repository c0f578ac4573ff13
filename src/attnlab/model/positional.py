"""How word order enters the model: one class per `model.positional` kind, listed in `POSITIONAL`.

A kind acts in one or both of two places, and its class supplies both:
- the embeddings: `sinusoidal` and `learned` add a vector per position (paper section 3.5);
- self-attention: `rope` rotates queries and keys (Su et al. 2021), `alibi` adds a per-head
  linear distance penalty to the scores (Press et al. 2022).
`none` gives the model no order at all (an ablation: the encoder becomes permutation-equivariant).

The model asks the kind for its modules and never names a kind itself, so a new kind is one
class here and one line in `POSITIONAL` (docs/positional.md walks through ALiBi).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TransformerConfig


# -- the embedding side: added to the scaled token embeddings ---------------------------------


class NoPositions(nn.Module):
    """Adds nothing: the embedding side of the kinds whose positions live in attention, or nowhere."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.max_len = max_len

    def check_length(self, x: torch.Tensor, offset: int) -> int:
        end = offset + x.size(1)
        if end > self.max_len:
            raise ValueError(f"sequence of length {end} exceeds model.max_len={self.max_len}")
        return end

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # x: (B, T, d_model); `offset`: the position of x's first row (incremental decoding)
        self.check_length(x, offset)
        return x


class SinusoidalPositions(NoPositions):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__(d_model, max_len)
        pos = torch.arange(max_len).unsqueeze(1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * inv_freq)
        pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
        # A buffer, not a parameter: it is a function of the position, and it need not
        # be saved (persistent=False keeps checkpoints independent of max_len).
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x + self.pe[offset : self.check_length(x, offset)]


class LearnedPositions(NoPositions):
    """One trained vector per position (the paper's Table 3 row E)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__(d_model, max_len)
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x + self.embedding.weight[offset : self.check_length(x, offset)]


# -- the attention side: acts on one attention module's queries, keys and scores --------------


class AttentionPositions(nn.Module):
    """Nothing inside attention: the kinds that add positions to the embeddings, or none at all.

    `MultiHeadAttention` calls both hooks; `offset` is the position of the first query (the
    decoding step, with a key/value cache), the keys always start at position 0.
    """

    def rotate(self, q: torch.Tensor, k: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (B, h, Tq, d_k) and keys (B, h, Tk, d_k) as attention compares them."""
        return q, k

    def score_bias(self, n_queries: int, n_keys: int, offset: int, causal: bool) -> torch.Tensor | None:
        """A float (1, h, Tq, Tk) added to the scaled scores (-inf: not attended), or None."""
        return None


class Rotary(AttentionPositions):
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

    def rotate(self, q: torch.Tensor, k: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        # With a cache, k holds only the new positions (the cached ones were rotated when stored),
        # so queries and keys share the offset.
        return self(q, offset), self(k, offset)


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's head-specific slopes m_h (Press et al. 2022, section 3).

    For n a power of 2, the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8): for 8 heads
    1/2, 1/4, ..., 1/256. Otherwise, the paper's rule: the slopes of the nearest power of 2
    below n, then every other slope of twice that many heads, until there are n.
    """

    def power_of_2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_heads & (n_heads - 1) == 0:
        return power_of_2(n_heads)
    below = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(below) + alibi_slopes(2 * below)[0::2][: n_heads - below]


class ALiBiBias(AttentionPositions):
    """Attention with Linear Biases: head h adds m_h * (j - i) to the score of query i on key j.

    Causal self-attention (the decoder) takes the paper's form, m_h * (j - i) for j <= i, with
    the later keys at -inf (the causal mask, folded in). The paper defines ALiBi for causal
    language models only; for the encoder's bidirectional self-attention this uses the
    symmetric -m_h * |i - j|, which equals the causal form wherever both attend.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        # Fixed, not learned, and a function of n_heads: not saved in checkpoints.
        slopes = torch.tensor(alibi_slopes(n_heads))[:, None, None]  # (h, 1, 1)
        self.register_buffer("slopes", slopes, persistent=False)

    def score_bias(self, n_queries: int, n_keys: int, offset: int, causal: bool) -> torch.Tensor:
        device = self.slopes.device
        i = torch.arange(offset, offset + n_queries, device=device)[:, None]  # query positions
        j = torch.arange(n_keys, device=device)[None, :]  # key positions
        bias = -self.slopes * (i - j).abs()  # (h, Tq, Tk)
        if causal:
            bias = bias.masked_fill(j > i, float("-inf"))
        return bias[None]


# -- the kinds: each supplies both sides --------------------------------------------------------


class PositionalKind:
    """One `model.positional` kind. This base class is the kind `none`: no order anywhere.

    A kind is built from the model's config and hands out fresh modules: one embedding-side
    module per embedding (source, target) and one attention-side module per attention layer,
    so a kind with parameters gets them per place, and the modules' names in a checkpoint
    are those of the places that hold them.
    """

    def __init__(self, cfg: TransformerConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: TransformerConfig) -> None:
        """Raise ValueError, naming the key, for a config this kind cannot be built with."""

    def embedding(self) -> nn.Module:
        """Added to the scaled token embeddings: `module(x (B, T, d_model), offset) -> same shape`."""
        return NoPositions(self.cfg.d_model, self.cfg.max_len)

    def self_attention(self) -> AttentionPositions:
        """For the self-attention of the encoder (bidirectional) and decoder (causal). Cross-attention
        compares positions of two different sentences and gets none, whatever the kind."""
        return AttentionPositions()

    def num_parameters(self) -> int:
        """Trainable parameters the kind adds to the whole model (`expected_num_parameters`)."""
        return 0


class Sinusoidal(PositionalKind):
    """The paper's fixed sinusoids added to the embeddings."""

    def embedding(self) -> nn.Module:
        return SinusoidalPositions(self.cfg.d_model, self.cfg.max_len)


class Learned(PositionalKind):
    """A trained vector per position added to the embeddings, source and target each their own."""

    def embedding(self) -> nn.Module:
        return LearnedPositions(self.cfg.d_model, self.cfg.max_len)

    def num_parameters(self) -> int:
        return 2 * self.cfg.max_len * self.cfg.d_model


class RoPE(PositionalKind):
    """Rotary positions on self-attention's queries and keys; nothing on the embeddings."""

    @classmethod
    def check(cls, cfg: TransformerConfig) -> None:
        if cfg.d_k % 2:
            width = f"model.d_head={cfg.d_head}" if cfg.d_head is not None else f"d_model/n_heads={cfg.d_k}"
            raise ValueError(
                f"model.positional=rope needs an even head width (it rotates query/key features in pairs), got {width}"
            )

    def self_attention(self) -> AttentionPositions:
        # RoPE rotates queries and keys, so it spans their width d_k (model.d_head), not d_v.
        return Rotary(self.cfg.d_k, self.cfg.max_len)


class ALiBi(PositionalKind):
    """A per-head linear distance penalty on self-attention's scores; nothing on the embeddings."""

    def self_attention(self) -> AttentionPositions:
        return ALiBiBias(self.cfg.n_heads)


POSITIONAL: dict[str, type[PositionalKind]] = {
    "sinusoidal": Sinusoidal,
    "learned": Learned,
    "rope": RoPE,
    "alibi": ALiBi,
    "none": PositionalKind,
}
"""Every `model.positional` value and its class: the one list of kinds (the config's check,
the model, the parameter count and the tests read it)."""


def positional(cfg: TransformerConfig) -> PositionalKind:
    """The kind `cfg.positional` names, built for this config."""
    return POSITIONAL[cfg.positional](cfg)
