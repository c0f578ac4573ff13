"""Key/value caches for incremental decoding: each step computes one new position.

Two ways to keep a hypothesis's history when beam search reorders the rows:
`KVCache` copies the cached positions to the surviving rows (the eager default), and
`IndirectKVCache` never moves them, keeping instead, for every row, which stored row holds
its key and value at each position ("cache indirection", as in FasterTransformer). The
second costs a gather at every read, which the compiled decoder step (decode.compile)
fuses into the attention kernel: the copies are gone and the reads cost what they did.
"""

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

    # Reads are views of contiguous buffers: attention takes its usual matmuls on them.
    gathered_reads = False

    def __init__(self, capacity: int = 64):
        self.capacity, self.length = max(1, capacity), 0
        self.k: torch.Tensor | None = None  # (N, h, capacity, d_k); positions >= length unused
        self.v: torch.Tensor | None = None  # (N, h, capacity, d_v): its own width (model.d_head sets d_k alone)
        self.spare: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one position, k (N, h, 1, d_k) and v (N, h, 1, d_v); returns all positions so far
        (N, h, length, d_k|d_v), as views."""
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


class IndirectKVCache:
    """Keys and values stored once, where they were computed; rows find theirs by index.

    Position j of every row is kept in slot j of time-major buffers (capacity, R, h, d_k);
    `history` (N, capacity, filled up to `length`) says, for each current row, which of the R
    stored rows holds each of its positions. Reordering rows (beam search keeping its
    survivors' parents, sentences leaving) reorders only `history`, integers; a read gathers
    the row's positions.
    Eager, that gather copies as much as `KVCache.reorder` did; inside the compiled step
    Inductor folds it into the attention's loops, so nothing is copied at all.
    """

    # Reads are gathers: compiled attention takes `attention_by_sums`, which fuses them.
    gathered_reads = True

    def __init__(self, capacity: int = 64):
        self.capacity, self.length = max(1, capacity), 0
        self.k: torch.Tensor | None = None  # (capacity, R, h, d_k); R: the most rows seen
        self.v: torch.Tensor | None = None  # (capacity, R, h, d_v)
        # (N, capacity): the stored row of each position so far; like the buffers it is written
        # in place and read as a slice, so the compiled step sees one shape at every length.
        self.history: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one position, k (N, h, 1, d_k) and v (N, h, 1, d_v); returns all positions so far
        (N, h, length, d_k|d_v), gathered."""
        t, n = self.length, k.size(0)
        if self.k is None:
            self.k, self.v = (x.new_empty(self.capacity, n, x.size(1), x.size(3)) for x in (k, v))
            self.history = torch.empty(n, self.capacity, dtype=torch.long, device=k.device)
        elif t == self.k.size(0):  # longer than planned: double, as a list does
            self.k, self.v = (torch.cat([x, torch.empty_like(x)], dim=0) for x in (self.k, self.v))
            self.history = torch.cat([self.history, torch.empty_like(self.history)], dim=1)
        # Slices, not integer indices, at position t: an integer would fix t in the compiled graph.
        self.k[t : t + 1, :n] = k.permute(2, 0, 1, 3)  # (N, h, 1, d_k) -> (1, N, h, d_k)
        self.v[t : t + 1, :n] = v.permute(2, 0, 1, 3)
        self.history[:, t : t + 1] = torch.arange(n, device=k.device)[:, None]  # stored at its own row
        self.length = t + 1
        rows, position = self.history[:, : t + 1], torch.arange(t + 1, device=k.device)
        return self.k[position, rows].transpose(1, 2), self.v[position, rows].transpose(1, 2)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (N',), in that order: only the history moves."""
        if self.k is None:
            return
        self.history = self.history.index_select(0, index)
        if index.numel() > self.k.size(1):  # more rows than stored (beam search after its first step)
            grown = [x.new_empty(x.size(0), index.numel(), *x.shape[2:]) for x in (self.k, self.v)]
            for new, old in zip(grown, (self.k, self.v)):
                new[: self.length, : old.size(1)] = old[: self.length]
            self.k, self.v = grown


@dataclass
class DecoderCache:
    """Everything a decoder step needs besides the new token: per-layer self-attention
    caches, the encoder output projected to keys/values once per layer, and its mask.

    The encoder side has one row per sentence while the decoder side may have several
    per sentence (beam search's K beams, rows s*K .. s*K+K-1): cross-attention groups a
    sentence's beams as queries of the same keys instead of copying the keys K times.
    """

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, keys (A, h, S, d_k), values (A, h, S, d_v)
    src_mask: torch.Tensor  # (A, 1, 1, S)
    capacity: int = 64  # positions to allocate for the self-attention caches
    indirect: bool = False  # IndirectKVCache (decode.compile) instead of KVCache
    self_kv: list[KVCache | IndirectKVCache] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.self_kv:
            kind = IndirectKVCache if self.indirect else KVCache
            self.self_kv = [kind(self.capacity) for _ in self.memory_kv]

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
