"""`decode.compile=true`: the decoder step under `torch.compile`.

A decoding step sends one position per row through every decoder layer: about a hundred
small kernels, each a few microseconds of Python and dispatch. On a 2-core CPU that is a
quarter of a greedy search (the same search with d_model 8 instead of 256 still takes 72 of
its 285 ms). Inductor fuses the element-wise work between the matmuls (LayerNorm, residual
adds, ReLU, softmax, head splits, the cache writes) into a few C++ kernels, and its C++
wrapper launches the whole step without Python (docs/performance.md).

The weights stay inputs of the compiled graph (no freezing), so a model that goes on
training is decoded with its current weights. Compiling costs about a minute on the first
batch on this machine (Inductor's on-disk cache makes it seconds in later processes), and
once more when the batch size or the source length first changes (from then on those
dimensions are dynamic): worth it for a test set or a corpus, not for a few sentences.
"""

from __future__ import annotations

import torch

from ..model import Transformer
from ..model.cache import DecoderCache

INDUCTOR_OPTIONS = {"cpp_wrapper": True}  # the step launched from C++: a tenth less than the Python wrapper
# Graphs one code object may collect before dynamo runs it eagerly. A test set takes ~7 of the
# decoder step (the first lengths, the shrinking batch, a single row, beam search's grouping),
# and every model compiled in the same process (the bench, the tests) adds its own.
RECOMPILE_LIMIT = 64


def compile_decoder(model: Transformer) -> Transformer:
    """Make `model.decode_step` (what greedy and beam search call each step) a compiled
    function, once per model; returns the model. Outputs equal the eager step's to float
    rounding (tests/test_decoding.py)."""
    if not is_compiled(model):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        eager = Transformer.decode_step.__get__(model)
        compiled = torch.compile(eager, options=INDUCTOR_OPTIONS)

        def decode_step(tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
            # The first step allocates the caches: run it eagerly rather than compile a graph for it.
            return (compiled if cache.length else eager)(tokens, cache)

        model.decode_step = decode_step  # an instance attribute hides the method
    return model


def is_compiled(model: Transformer) -> bool:
    return "decode_step" in vars(model)
