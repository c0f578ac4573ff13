"""Decoding: greedy and beam search over a `Transformer`, with the key/value cache."""

from .beam import beam_search, length_penalty
from .greedy import greedy_search, output_limits
from .search import decode

__all__ = ["beam_search", "decode", "greedy_search", "length_penalty", "output_limits"]
