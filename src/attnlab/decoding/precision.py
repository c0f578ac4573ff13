"""`decode.precision`: the number format of the weights a search runs with.

- `fp32`: the model as trained (the default, and what evaluation reports).
- `bf16`: a bfloat16 copy of the whole model. This CPU family has avx512_bf16, where bfloat16
  matmuls run about twice as fast as fp32 ones; the next-token scores are still taken in fp32
  (next_token_log_probs), so only the network's own arithmetic is rounded.
- `int8`: dynamic int8 quantisation (torch's own, fbgemm on x86, VNNI where the CPU has it) of the
  linear layers that are called as modules: the output layer ("the Linear layer", the largest
  matmul of a decoding step at any vocabulary of thousands), the feed-forward layers and W_O.
  Weights are stored in int8 per output channel, activations quantised per batch at run time.
  W_Q, W_K and W_V stay fp32: cross-attention slices them (MultiHeadAttention.project_query),
  which a quantised layer does not allow.

The trained model is never changed: each call gets a converted copy (milliseconds for these sizes).
The changes in BLEU and speed are measured by `attnlab-bench` (docs/performance.md).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import ConfigError
from ..model import Transformer


def int8_layers(model: Transformer) -> set[str]:
    """The names of the linear layers `int8` quantises: every nn.Linear but attention's in_proj."""
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("in_proj")}


def for_decoding(model: Transformer, precision: str, compile: bool = False) -> Transformer:
    """The model to decode with at `precision` (fp32: `model` itself; otherwise a converted copy in eval mode)."""
    if precision == "fp32":
        return model
    if precision == "int8" and compile:
        raise ConfigError("decode.precision=int8 cannot run under decode.compile=true (torch.compile does not "
                          "take dynamically quantised layers); use one or the other")  # fmt: skip
    if next(model.parameters()).device.type != "cpu" and precision == "int8":
        raise ConfigError("decode.precision=int8 runs on the CPU only (fbgemm); use bf16 on a GPU")
    converted = copy.deepcopy(model).eval()
    if precision == "bf16":
        return converted.to(torch.bfloat16)
    if precision == "int8":
        # torch.ao's eager quantisation is deprecated in favour of torchao, an extra dependency for
        # the same fbgemm kernels; it still ships with the pinned torch and is what runs here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            # The output layer shares its weight with the target embedding (tying): the quantised
            # copy gets its own int8 weight and the embedding keeps the fp32 one.
            return quantize_dynamic(converted, int8_layers(converted), dtype=torch.qint8)
    raise ConfigError(f"decode.precision={precision!r} is not one of ['fp32', 'bf16', 'int8']")
