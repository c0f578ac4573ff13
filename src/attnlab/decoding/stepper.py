"""One decoder step at a time, with or without the key/value cache.

Both steppers take the newest token of every row and return next-token logits (N, V),
and both can keep a subset of rows (`reorder`): beam search keeps the surviving
hypotheses' parents, and finished sentences leave the batch. The uncached stepper
re-runs the decoder over the whole prefix each step: it is the reference the cache
must reproduce, and the baseline the cache is measured against.
"""

from __future__ import annotations

import torch

from ..model import Transformer
from .compiled import compiled_decode_step


class CachedStepper:
    """Each step embeds one position and attends to the cached keys/values: O(t) per step.

    Rows may be several per sentence (beam search's K beams, rows s*K .. s*K+K-1); the
    encoder's keys/values stay one copy per sentence (cross-attention groups a sentence's rows).
    """

    def __init__(self, model: Transformer, memory: torch.Tensor, src_mask: torch.Tensor, steps: int | None = None,
                 compile: bool = False, indirect: bool = False):  # fmt: skip
        self.model = model
        self.cache = model.start_decoding(memory, src_mask, steps, indirect)
        self.compiled = compiled_decode_step(type(model)) if compile else None  # decode.compile

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, V)
        if self.compiled is not None and self.cache.length:  # the first step allocates the caches: eager
            return self.compiled(self.model, tokens, self.cache)
        return self.model.decode_step(tokens, self.cache)

    def reorder(self, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        """Keep decoder rows `rows`; `sentences` (indices into the current sentences) when some leave."""
        self.cache.reorder(rows, sentences)


class FullPrefixStepper:
    """Re-decodes BOS..newest token from scratch each step: O(t^2) per step, no cache."""

    def __init__(self, model: Transformer, memory: torch.Tensor, src_mask: torch.Tensor):
        self.model, self.memory, self.src_mask = model, memory, src_mask  # one row per sentence
        self.prefix = memory.new_empty((memory.size(0), 0), dtype=torch.long)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.prefix = torch.cat([self.prefix, tokens[:, None]], dim=1)  # (N, t)
        per_sentence = self.prefix.size(0) // self.memory.size(0)  # beam search: a sentence's beams
        memory, src_mask = (x.repeat_interleave(per_sentence, 0) for x in (self.memory, self.src_mask))
        return self.model.decode(self.prefix, memory, src_mask)[:, -1]  # (N, V)

    def reorder(self, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        self.prefix = self.prefix.index_select(0, rows)
        if sentences is not None:
            self.memory = self.memory.index_select(0, sentences)
            self.src_mask = self.src_mask.index_select(0, sentences)


def make_stepper(model: Transformer, memory: torch.Tensor, src_mask: torch.Tensor, use_cache: bool,
                 steps: int | None = None, compile: bool = False, indirect: bool = False):  # fmt: skip
    """`steps`: the most decoder steps to expect (the cache is sized for them); `compile`: the
    cached step under torch.compile (attnlab/decoding/compiled.py); `indirect`: reordered rows
    index the stored keys instead of copying them (IndirectKVCache, model/cache.py)."""
    if use_cache:
        return CachedStepper(model, memory, src_mask, steps, compile, indirect)
    return FullPrefixStepper(model, memory, src_mask)  # the reference: always eager, nothing to size
