"""Decoding: greedy and beam search over a `Transformer`, with the key/value cache, set by one
typed `DecodeConfig` (the `decode.*` keys)."""

from .beam import beam_search, length_penalty
from .config import DecodeConfig
from .greedy import greedy_search, output_limits
from .search import decode, generate

__all__ = ["DecodeConfig", "beam_search", "decode", "generate", "greedy_search", "length_penalty", "output_limits"]
