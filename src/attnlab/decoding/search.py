"""`decode`: the `decode.*` config keys -> greedy or beam search, one result shape for both."""

from __future__ import annotations

import torch

from ..model import Transformer
from .beam import beam_search
from .greedy import greedy_search


def decode(
    model: Transformer,
    src: torch.Tensor,
    strategy: str = "greedy",
    beam_size: int = 4,
    n_best: int = 1,
    length_penalty: float = 0.0,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    min_len: int = 0,
    use_cache: bool = True,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """src (B, S) -> tokens (B, n, T) padded with pad_id, log-probabilities (B, n), best first.

    Greedy gives n = 1 (its `beam_size`, `n_best` and `length_penalty` are ignored).
    `compile`: run the cached decoder step under torch.compile (attnlab/decoding/compiled.py).
    """
    limits = dict(max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len, use_cache=use_cache, compile=compile)
    if strategy == "greedy":
        tokens, scores = greedy_search(model, src, with_scores=True, **limits)
        return tokens[:, None], scores[:, None]
    if strategy == "beam":
        return beam_search(model, src, beam_size, n_best, length_penalty_alpha=length_penalty, **limits)
    raise ValueError(f"decode.strategy={strategy!r} is not one of ['greedy', 'beam']")
