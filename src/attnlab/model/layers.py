"""The boxes of the paper's figure 1: feed-forward, sublayer connection, encoder and
decoder layers, and the stacks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .attention import MultiHeadAttention
from .config import TransformerConfig
from .dropout import Dropout
from .positional import positional


class FeedForward(nn.Module):
    """Position-wise feed-forward network: FFN(x) = max(0, x W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))  # (B, T, d_model)


class SublayerConnection(nn.Module):
    """The one place where residual, dropout and LayerNorm meet around a sublayer.

    norm=post (the paper, "Add & Normalize"): LayerNorm(x + Dropout(Sublayer(x)))
    norm=pre  (fairseq normalize_before):     x + Dropout(Sublayer(LayerNorm(x)))
    residual=False removes the `x +` skip path, so the sublayer output replaces x.
    """

    def __init__(self, d_model: int, dropout: float, norm: str, residual: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = norm == "pre"
        self.residual = residual

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        skip = x if self.residual else None
        if self.pre_norm:
            return self.dropout.add_to(skip, sublayer(self.norm(x)))
        return self.norm(self.dropout.add_to(skip, sublayer(x)))


def _sublayer(cfg: TransformerConfig) -> SublayerConnection:
    return SublayerConnection(cfg.d_model, cfg.dropout, cfg.norm, cfg.residual)


def _final_norm(cfg: TransformerConfig) -> nn.Module:
    # The other half of model.norm, beside SublayerConnection: pre-norm sublayers leave the
    # stack's output unnormalised, so a pre-norm stack ends with a LayerNorm of its own.
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()


def _attention(cfg: TransformerConfig, self_attention: bool) -> MultiHeadAttention:
    # Self-attention takes the attention side of the model.positional kind (RoPE's rotation,
    # ALiBi's bias); cross-attention compares positions of two sentences and takes none.
    positions = positional(cfg).self_attention() if self_attention else None
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, positions, d_k=cfg.d_k)


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward, each inside a sublayer connection."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = _attention(cfg, self_attention=True)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff)
        self.sublayer = nn.ModuleList([_sublayer(cfg) for _ in range(2)])

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        # x: (B, S, d_model); src_mask: (B, 1, 1, S)
        x = self.sublayer[0](x, lambda y: self.self_attn.self_attention(y, src_mask))
        return self.sublayer[1](x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, feed-forward."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = _attention(cfg, self_attention=True)
        self.src_attn = _attention(cfg, self_attention=False)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff)
        self.sublayer = nn.ModuleList([_sublayer(cfg) for _ in range(3)])

    def forward(self, x, memory_kv, src_mask, self_kv=None) -> torch.Tensor:
        # x: (B, T, d_model); memory_kv: keys (B, h, S, d_k), values (B, h, S, d_v); src_mask: (B, 1, 1, S)
        # Targets are right-padded, so the causal mask alone keeps every real position
        # away from padding (padding only ever comes after it): no target padding mask.
        x = self.sublayer[0](x, lambda y: self.self_attn.self_attention(y, causal=True, cache=self_kv))
        x = self.sublayer[1](x, lambda y: self.src_attn.cross_attention(y, memory_kv, src_mask))
        return self.sublayer[2](x, self.feed_forward)


class Encoder(nn.Module):
    """N encoder layers; pre-norm stacks end with a LayerNorm (their sublayers leave x unnormalised)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.final_norm = _final_norm(cfg)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.final_norm(x)  # (B, S, d_model)


class Decoder(nn.Module):
    """N decoder layers over the embedded target prefix and the encoder output."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.final_norm = _final_norm(cfg)

    def project_memory(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.src_attn.project_kv(memory) for layer in self.layers]

    def forward(self, x: torch.Tensor, memory_kv, src_mask: torch.Tensor, self_kv=None) -> torch.Tensor:
        # x: (B, T, d_model). self_kv: per-layer KVCache when decoding step by step.
        self_kv = self_kv or [None] * len(self.layers)
        for layer, layer_memory_kv, layer_kv in zip(self.layers, memory_kv, self_kv):
            x = layer(x, layer_memory_kv, src_mask, layer_kv)
        return self.final_norm(x)  # (B, T, d_model)
