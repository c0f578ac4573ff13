"""Multi-head scaled dot-product attention (paper section 3.2), with the Illustrated
Transformer's names: queries, keys and values, scores divided by sqrt(d_k), softmax,
heads concatenated and projected by W_O.

Queries and keys are d_k wide per head, values d_v: the same d_model / h by default, while
`model.d_head` sets d_k alone (Table 3 row B), so every function here takes the two apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .positional import AttentionPositions

# Up to this many queries per head, attention without gradients takes the explicit matmuls,
# longer or trained ones the fused kernel. Decoding steps (1 query, or a sentence's beams in
# cross-attention) are what it is for; short no-grad forwards (validation) take it too, with the
# same results, except a row whose keys are all masked: NaN here, 0 from the fused kernel (never
# the case in attnlab: every source ends with EOS, and causal rows see themselves).
SMALL_QUERY = 16
# Below this many multiply-adds per matrix (queries x keys x head width), ATen's CPU batched
# matmul takes a plain loop instead of the BLAS library, several times slower than products
# and sums at a decoding step's sizes (one query, a few dozen keys; docs/performance.md).
PLAIN_LOOP_BMM = 400


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask as `F.scaled_dot_product_attention` reads its attn_mask: a boolean one keeps the
    scores where True and puts the rest at -inf, a float one (a position bias) is added."""
    if mask is None:
        return scores
    if mask.is_floating_point():
        return scores + mask
    return scores.masked_fill(~mask, float("-inf"))


def with_bias(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """One float mask from a boolean padding mask (B, 1, 1, Tk) and a score bias (1, h, Tq, Tk)."""
    return bias if mask is None else torch.where(mask, bias, float("-inf"))


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) with masked keys at -inf: (B, h, Tq, d_k) x (B, h, Tk, d_k) -> (B, h, Tq, Tk).
    d_k is read off the queries, so a narrower `model.d_head` scales by its own width."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if is_causal:
        Tq, Tk = scores.shape[-2:]
        causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    return apply_mask(scores, mask).softmax(dim=-1)


def attention_by_sums(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V written as products and sums instead of matmuls, for the
    compiled beam search step: Inductor turns it into one loop nest with the softmax and with
    whatever produced k and v (the gather of IndirectKVCache), where the matmuls would be
    separate library calls on materialised inputs, and a sentence's beams attending together to
    the encoder gain from it too. For one query per row (greedy) there is no gather to fuse and
    the matmuls stay the faster form (figures: docs/performance.md). Eager it builds
    (B, h, Tq, Tk, d_k) products, which pays only where ATen's batched matmul would take its plain
    loop (`PLAIN_LOOP_BMM`): a decoding step's first few dozen keys. Shapes as `MultiHeadAttention.attend`."""
    scores = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) / math.sqrt(q.size(-1))  # (B, h, Tq, Tk)
    scores = apply_mask(scores, mask)
    return (scores.softmax(dim=-1)[..., None] * v[..., None, :, :]).sum(-2)  # (B, h, Tq, d_v)


class MultiHeadAttention(nn.Module):
    """h heads, each attending in its own subspace: queries and keys d_k wide (`d_k`, default
    d_model / h), values d_v = d_model / h wide, so the concatenated heads are d_model wide.

    W_Q and W_K are (h*d_k) x d_model, W_V is d_model x d_model; they are stored stacked in
    `in_proj` (rows [W_Q; W_K; W_V]) so self-attention projects with one matmul, and
    cross-attention uses the W_Q rows on the decoder state and the W_K, W_V rows on the
    encoder output. `out_proj` is W_O. Masks are boolean, True where a key may be seen.

    `positions` is the attention side of the `model.positional` kind (positional.py): it may
    rotate queries and keys (RoPE) and add a bias to the scores (ALiBi, which makes the mask
    `attend` sees a float one, `with_bias`); by default it does neither.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attention_dropout: float,
        positions: AttentionPositions | None = None,
        d_k: int | None = None,
    ):
        super().__init__()
        self.n_heads, self.d_v = n_heads, d_model // n_heads
        self.d_k = self.d_v if d_k is None else d_k
        # Row blocks of in_proj: W_Q, W_K, W_V.
        self.widths = (n_heads * self.d_k, n_heads * self.d_k, n_heads * self.d_v)
        self.in_proj = nn.Linear(d_model, sum(self.widths))
        self.out_proj = nn.Linear(n_heads * self.d_v, d_model)
        self.positions = AttentionPositions() if positions is None else positions
        self.attention_dropout = attention_dropout
        # Set by Transformer.attention_maps(): take the explicit path and keep the weights.
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, width = x.shape  # (B, T, h*d) -> (B, h, T, d), d = d_k for queries/keys, d_v for values
        return x.view(B, T, self.n_heads, width // self.n_heads).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = x.shape  # (B, h, T, d_v) -> (B, T, h*d_v = d_model): "concatenate the heads"
        return x.transpose(1, 2).reshape(B, T, self.n_heads * self.d_v)

    def project_query(self, x: torch.Tensor) -> torch.Tensor:
        d = self.widths[0]
        return self.split_heads(F.linear(x, self.in_proj.weight[:d], self.in_proj.bias[:d]))

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output, computed once and reused at every decoder step."""
        d = self.widths[0]
        k, v = F.linear(memory, self.in_proj.weight[d:], self.in_proj.bias[d:]).split(self.widths[1:], dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def self_attention(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x attends to itself: (B, T, d_model) -> (B, T, d_model).

        With a cache, x holds only the new positions; their keys and values are appended
        and the queries attend to every cached position (all earlier, so no mask).
        """
        q, k, v = (self.split_heads(t) for t in self.in_proj(x).split(self.widths, dim=-1))  # (B, h, T, d_k|d_v)
        offset = 0 if cache is None else cache.length
        q, k = self.positions.rotate(q, k, offset)
        if cache is not None:
            if x.size(1) != 1:
                raise ValueError("cached self-attention takes one new position at a time")
            k, v = cache.append(k, v)  # gathered by row history, with an IndirectKVCache
            causal = False
        bias = self.positions.score_bias(q.size(-2), k.size(-2), offset, causal)
        if bias is not None:
            # The bias carries the causal mask (-inf on later keys): the fused kernel takes a
            # float attn_mask or is_causal, not both. Padding keys stay at -inf.
            mask, causal = with_bias(mask, bias.to(q.dtype)), False
        by_sums = cache is not None and cache.gathered_reads
        return self.out_proj(self.merge_heads(self.attend(q, k, v, mask, causal, by_sums)))

    def cross_attention(
        self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Decoder queries attend to the encoder's keys and values: (B, T, d_model) -> (B, T, d_model).

        When x has G rows per encoder row (beam search: a sentence's beams, one new position
        each), a sentence's G queries attend together to its one copy of the keys and values.
        """
        q, (k, v) = self.project_query(x), memory_kv
        B, G = q.size(0), q.size(0) // k.size(0)
        if G == 1:
            return self.out_proj(self.merge_heads(self.attend(q, k, v, mask, False)))
        if q.size(2) != 1 or G * k.size(0) != B:
            raise ValueError(f"{B} query rows do not group into {k.size(0)} sentences of one position each")
        q = q.view(-1, G, self.n_heads, self.d_k).transpose(1, 2)  # (A, h, G, d_k): beams as positions
        out = self.attend(q, k, v, mask, False, by_sums=True).transpose(1, 2)  # (A, G, h, d_v)
        return self.out_proj(out.reshape(B, 1, self.n_heads * self.d_v))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
        by_sums: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """softmax(Q K^T / sqrt(d_k)) V per head: q (B, h, Tq, d_k); k (B, h, Tk, d_k); v (B, h, Tk, d_v);
        mask broadcastable to (B, h, Tq, Tk) -> (B, h, Tq, d_v), the heads not yet concatenated.
        `by_sums`: under torch.compile, a decoding step takes `attention_by_sums` (beam search)."""
        p = self.attention_dropout if self.training else 0.0
        if self.keep_weights:
            weights = attention_weights(q, k, mask, causal)
            self.weights = weights.detach()
            return F.dropout(weights, p) @ v
        if q.size(-2) <= SMALL_QUERY and not causal and p == 0.0 and not torch.is_grad_enabled():
            # A decoding step (one query per head, or a sentence's beams as queries): two
            # small matmuls cost less than the fused kernel's set-up (docs/performance.md).
            # Training keeps the fused kernel (and its backward) for short batches too.
            if torch.compiler.is_compiling():
                if by_sums:  # decode.compile: one loop, gathers included
                    return attention_by_sums(q, k, v, mask)
            # ATen's eager plain loop only: in a compiled step the size test would guard every graph on it.
            elif q.device.type == "cpu" and q.size(-2) * k.size(-2) * min(q.size(-1), v.size(-1)) < PLAIN_LOOP_BMM:
                return attention_by_sums(q, k, v, mask)
            return attention_weights(q, k, mask, False) @ v
        # Fused kernel (flash / memory-efficient on GPU, fused on CPU).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
