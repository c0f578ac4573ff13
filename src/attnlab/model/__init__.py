"""The transformer in pure PyTorch: no Lightning, no Hydra."""

from .attention import MultiHeadAttention
from .cache import DecoderCache, IndirectKVCache, KVCache
from .config import TransformerConfig
from .params import expected_num_parameters
from .transformer import Transformer

__all__ = [
    "DecoderCache",
    "IndirectKVCache",
    "KVCache",
    "MultiHeadAttention",
    "Transformer",
    "TransformerConfig",
    "expected_num_parameters",
]
