"""Dropout (Srivastava et al. 2014; the paper's P_drop) with a cheaper random mask on CPU,
and the residual connection's `x + Dropout(y)` as one multiply-add.

`nn.Dropout` draws one random number per element (`bernoulli_`), and a training step draws
a mask at every dropout site (figures: docs/performance.md). Here one 64-bit draw over the
full int64 range carries four uniform 16-bit lanes, so a mask costs a quarter of the draws. An element is dropped
when its lane falls below round(p * 65536) of 65536, so the drop rate is p rounded to
1/65536 (0.1 -> 0.100006), and kept elements are scaled by the exact inverse of the rate
used. The mask is kept as floats, 0 or that scale: on CPU a multiply by a float mask is
faster than `torch.where` or a multiply by a boolean one, so the forward
is one `addcmul` (x + y * mask) and the backward one multiply (grad * mask).
Elsewhere than on CPU, and in eval mode, this is `nn.functional.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANES = 65536
INT64_MIN = -(2**63)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """-> a float mask of `shape`: 1 / (1 - p') with probability 1 - p', else 0; p' = p to 1/65536."""
    n = shape.numel()
    bits = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_(INT64_MIN, None)  # all 64 bits
    lanes = bits.view(torch.int16)[:n]  # uniform on [-32768, 32767]
    dropped = round(p * LANES)
    keep = lanes.ge(dropped - LANES // 2).to(torch.float32)
    return keep.mul_(LANES / (LANES - dropped)).view(shape)


class _MaskedAdd(torch.autograd.Function):
    """skip + y * mask, with a constant mask: the backward is grad and grad * mask."""

    @staticmethod
    def forward(ctx, skip, y, mask):
        ctx.save_for_backward(mask)
        return torch.mul(y, mask) if skip is None else torch.addcmul(skip, y, mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad if ctx.needs_input_grad[0] else None), grad * mask, None


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_to(None, x)

    def add_to(self, skip: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """skip + Dropout(y) (a residual connection), or Dropout(y) when skip is None."""
        if self.training and self.p > 0.0:
            if y.device.type == "cpu" and y.dtype == torch.float32:
                if skip is not None and skip.shape != y.shape:
                    skip = skip.expand_as(y)
                return _MaskedAdd.apply(skip, y, keep_mask(y.shape, self.p, y.device))
            y = F.dropout(y, self.p, training=True)
        return y if skip is None else skip + y

    def extra_repr(self) -> str:
        return f"p={self.p}"
