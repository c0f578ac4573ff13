"""Decoding: greedy and beam search over a `Transformer`, with the key/value cache."""

from .beam import beam_search
from .greedy import greedy_search, output_limits

__all__ = ["beam_search", "greedy_search", "output_limits"]
