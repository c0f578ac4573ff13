"""`generate`: a `DecodeConfig` -> greedy or beam search, one result shape for both."""

from __future__ import annotations

from typing import Any

import torch

from ..model import Transformer
from .beam import beam_search
from .config import DecodeConfig
from .greedy import greedy_search


def generate(
    model: Transformer, src: torch.Tensor, config: DecodeConfig | None = None, /, *, use_cache: bool = True, **keys: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """src (B, S) -> output tokens (B, n, T) padded with pad_id, log-probabilities (B, n), best first.

    Decodes as `config` says; `keys` (DecodeConfig's fields) change it, or, without a config,
    change DecodeConfig's defaults: `generate(model, src, strategy="beam", n_best=2)`. Greedy
    search gives n = 1. `use_cache=False` re-runs the decoder over the whole prefix each step
    (the reference the cache is tested against). `compile`: attnlab/decoding/compiled.py.
    """
    if config is None:
        config = DecodeConfig.from_dict(keys)
    elif not isinstance(config, DecodeConfig):
        raise TypeError(f"generate: config must be a DecodeConfig, got {type(config).__name__}")
    elif keys:
        config = config.replace(**keys)
    limits = dict(max_len_a=config.max_len_a, max_len_b=config.max_len_b, min_len=config.min_len,
                  use_cache=use_cache, compile=config.compile)  # fmt: skip
    if config.strategy == "beam":
        return beam_search(model, src, config.beam_size, config.n_best, length_penalty_alpha=config.length_penalty,
                           **limits)  # fmt: skip
    tokens, scores = greedy_search(model, src, with_scores=True, **limits)
    return tokens[:, None], scores[:, None]


# attnlab.decoding's name for `generate` before it had its own: `decode` also names the model's
# decoder pass (Transformer.decode) and a tokenizer's ids -> text, so the search took another name.
decode = generate
