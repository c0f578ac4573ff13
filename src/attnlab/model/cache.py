"""Key/value caches for incremental decoding: each step computes one new position."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Keys and values of the positions decoded so far for one self-attention layer."""

    k: torch.Tensor | None = None  # (B, h, t, d_k)
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class DecoderCache:
    """Everything a decoder step needs besides the new token: per-layer self-attention
    caches, the encoder output projected to keys/values once per layer, and its mask."""

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]
    src_mask: torch.Tensor  # (B, 1, 1, S)
    self_kv: list[KVCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.self_kv:
            self.self_kv = [KVCache() for _ in self.memory_kv]

    @property
    def length(self) -> int:
        return self.self_kv[0].length

    def reorder(self, index: torch.Tensor, memory: bool = False) -> None:
        """Keep rows `index` (beam search: the surviving hypotheses' parents).

        The encoder side is identical for every beam of a sentence, so it is only
        reindexed when the set of sentences changes (`memory=True`).
        """
        for kv in self.self_kv:
            kv.k, kv.v = kv.k.index_select(0, index), kv.v.index_select(0, index)
        if memory:
            self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
            self.src_mask = self.src_mask.index_select(0, index)
