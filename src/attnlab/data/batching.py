"""Token-budget batches of similar-length sentences (the paper: "batched together by
approximate sequence length ... approximately 25000 source tokens and 25000 target tokens")."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from .tokenizers import BOS, EOS, PAD


@dataclass
class Example:
    index: int
    src: torch.Tensor  # (S,) source ids + EOS
    tgt: torch.Tensor  # (T,) target ids (no BOS/EOS)


def make_examples(src_ids: list[list[int]], tgt_ids: list[list[int]]) -> list[Example]:
    return [
        Example(i, torch.tensor(s + [EOS], dtype=torch.long), torch.tensor(t, dtype=torch.long))
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids))
    ]


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded batch: src (B, S); tgt_in = BOS + y and tgt_out = y + EOS, both (B, T)."""
    bos, eos = torch.tensor([BOS]), torch.tensor([EOS])
    return {
        "index": torch.tensor([e.index for e in examples]),
        "src": pad_sequence([e.src for e in examples], batch_first=True, padding_value=PAD),
        "tgt_in": pad_sequence([torch.cat([bos, e.tgt]) for e in examples], batch_first=True, padding_value=PAD),
        "tgt_out": pad_sequence([torch.cat([e.tgt, eos]) for e in examples], batch_first=True, padding_value=PAD),
    }


class TokenBucketSampler(torch.utils.data.Sampler):
    """Yields lists of indices whose padded size (sentences x longest side) fits `max_tokens`.

    Sentences are sorted by length so a batch wastes little on padding; the batch order
    is shuffled per epoch from (seed, epoch), so a resumed run sees the same order.
    Under DDP each process takes every world_size-th batch.
    """

    def __init__(self, lengths: list[int], max_tokens: int, shuffle: bool, seed: int = 0):
        if max_tokens < max(lengths):
            raise ValueError(
                f"data.max_tokens={max_tokens} is smaller than the longest sentence ({max(lengths)} tokens); raise it"
            )
        self.lengths, self.max_tokens, self.shuffle, self.seed = lengths, max_tokens, shuffle, seed
        self.epoch = 0
        self.batches = self._make_batches()

    def _make_batches(self) -> list[list[int]]:
        # Random tie-breaking inside a length keeps batches varied across runs with other seeds.
        rng = random.Random(self.seed)
        order = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], rng.random()))
        batches, batch, longest = [], [], 0
        for i in order:
            longest_if_added = max(longest, self.lengths[i])
            if batch and longest_if_added * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch, longest_if_added = [], self.lengths[i]
            batch.append(i)
            longest = longest_if_added
        if batch:
            batches.append(batch)
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_batches(self) -> list[list[int]]:
        batches = list(self.batches)
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(batches)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            batches = batches[: len(batches) - len(batches) % world][rank::world] or batches[:1]
        return batches

    def __iter__(self):
        return iter(self._epoch_batches())

    def __len__(self) -> int:
        return len(self._epoch_batches())
