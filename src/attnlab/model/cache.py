"""Key/value caches for incremental decoding: each step computes one new position."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVCache:
    """Keys and values of the positions decoded so far for one self-attention layer.

    The buffers hold `capacity` positions and are allocated at the first step, so a step
    writes its one new position in place instead of concatenating (copying) the whole
    prefix. Reordering rows (beam search keeping its survivors' parents) copies only the
    positions filled so far, into a spare pair of buffers that then swaps with the live one.
    """

    def __init__(self, capacity: int = 64):
        self.capacity, self.length = max(1, capacity), 0
        self.k: torch.Tensor | None = None  # (N, h, capacity, d_k); positions >= length unused
        self.v: torch.Tensor | None = None
        self.spare: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one position (N, h, 1, d_k); returns all positions so far (N, h, length, d_k), as views."""
        t = self.length
        if self.k is None:
            self.k, self.v = (x.new_empty(*x.shape[:2], self.capacity, x.size(3)) for x in (k, v))
        elif t == self.k.size(2):  # longer than planned: double, as a list does
            self.k, self.v = (torch.cat([x, torch.empty_like(x)], dim=2) for x in (self.k, self.v))
            self.spare = None
        self.k[:, :, t : t + 1] = k
        self.v[:, :, t : t + 1] = v
        self.length = t + 1
        return self.k[:, :, : t + 1], self.v[:, :, : t + 1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (N',), in that order."""
        if self.k is None:
            return
        t, n = self.length, index.numel()
        if self.spare is None or self.spare[0].size(0) != n:
            self.spare = (self.k.new_empty(n, *self.k.shape[1:]), self.v.new_empty(n, *self.v.shape[1:]))
        (k, v), old = self.spare, (self.k, self.v)
        torch.index_select(self.k[:, :, :t], 0, index, out=k[:, :, :t])
        torch.index_select(self.v[:, :, :t], 0, index, out=v[:, :, :t])
        self.k, self.v = k, v
        self.spare = old if old[0].size(0) == n else None


@dataclass
class DecoderCache:
    """Everything a decoder step needs besides the new token: per-layer self-attention
    caches, the encoder output projected to keys/values once per layer, and its mask.

    The encoder side has one row per sentence while the decoder side may have several
    per sentence (beam search's K beams, rows s*K .. s*K+K-1): cross-attention groups a
    sentence's beams as queries of the same keys instead of copying the keys K times.
    """

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, 2 x (A, h, S, d_k)
    src_mask: torch.Tensor  # (A, 1, 1, S)
    capacity: int = 64  # positions to allocate for the self-attention caches
    self_kv: list[KVCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.self_kv:
            self.self_kv = [KVCache(self.capacity) for _ in self.memory_kv]

    @property
    def length(self) -> int:
        return self.self_kv[0].length

    def reorder(self, index: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        """Keep decoder rows `index` (beam search: the surviving hypotheses' parents), and,
        when the set of sentences changes, the encoder rows `sentences`."""
        for kv in self.self_kv:
            kv.reorder(index)
        if sentences is not None:
            # The keys keep their transposed layout (Transformer.start_decoding).
            self.memory_kv = [
                (k.mT.index_select(0, sentences).mT, v.index_select(0, sentences)) for k, v in self.memory_kv
            ]
            self.src_mask = self.src_mask.index_select(0, sentences)
