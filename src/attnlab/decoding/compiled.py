"""`decode.compile=true`: the decoder step under `torch.compile`.

A decoding step sends one position per row through every decoder layer: about a hundred
small kernels, each a few microseconds of Python and dispatch: on a CPU a sizeable share of
a small model's search, paid even when the matmuls are tiny (figures: docs/performance.md).
Inductor fuses the element-wise work between the matmuls (LayerNorm, residual
adds, ReLU, softmax, head splits, the cache writes) into a few C++ kernels, and its C++
wrapper launches the whole step without Python. Beam search's compiled
step also keeps its cache by indirection (model/cache.py, IndirectKVCache): the survivors'
keys are read through an index inside the fused attention instead of being copied each step.

Nothing is stored on the model (it still copies, pickles and trains as before): the step
function of the model's class is compiled once per process and called with the model as an
argument, so the weights stay inputs of the graph (no freezing) and a model that goes on
training is decoded with its current weights. A search compiles several graphs, each taking
seconds: the first lengths, then once more when the batch size or the source length first
changes (from then on those dimensions are dynamic), a single row, beam search's grouping.
On a test set of real sentences the gain is small, since sentences leave the batch early and
the shapes keep changing; full-length batches gain most (docs/performance.md). So it is
worth it for a corpus or a long-lived process, not for one test set; off by default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model import Transformer

INDUCTOR_OPTIONS = {"cpp_wrapper": True}  # the step launched from C++, without Inductor's Python wrapper
# Graphs one code object may collect before dynamo runs it eagerly. A test set takes ~7 of the
# decoder step (the first lengths, the shrinking batch, a single row, beam search's grouping),
# and models of other sizes in the same process (the bench, the tests) add their own.
RECOMPILE_LIMIT = 64

_compiled: dict[type, Callable] = {}


def compiled_decode_step(model_class: type[Transformer]) -> Callable:
    """`model_class.decode_step` under torch.compile, created once per class: call it as
    `step(model, tokens, cache)`. Outputs equal the eager step's to float rounding
    (tests/test_decoding.py)."""
    if model_class not in _compiled:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        _compiled[model_class] = torch.compile(model_class.decode_step, options=INDUCTOR_OPTIONS)
    return _compiled[model_class]
