"""Dropout (Srivastava et al. 2014; the paper's P_drop) with a cheaper random mask on CPU.

`nn.Dropout` draws one random number per element (`bernoulli_`), about a tenth of a CPU
training step at 17 dropout sites. One 64-bit draw carries three 16-bit lanes here (the
fourth lane's top bit is always 0: torch's random_ on int64 stops at 2**63 - 1), so a
mask costs a third of the draws. An element is dropped when its lane falls below
round(p * 65536) of 65536, so the drop rate is p rounded to 1/65536 (0.1 -> 0.100006) and
the kept elements are scaled by the exact inverse of the rate used. The autograd of
`torch.where` keeps only the boolean mask for the backward pass. Elsewhere than on CPU,
and in eval mode, this is `nn.functional.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANES = 65536


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """-> a boolean mask, True with probability 1 - p (to 1/65536), and 1 / that probability."""
    n = shape.numel()
    draws = -(-n // 3)
    bits = torch.empty(draws, dtype=torch.int64, device=device).random_()
    lanes = bits.view(torch.int16).view(draws, 4)[:, :3]  # uniform on [-32768, 32767]
    dropped = round(p * LANES)
    keep = (lanes >= dropped - LANES // 2).reshape(-1)[:n].view(shape)
    return keep, LANES / (LANES - dropped)


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return torch.where(keep, x, 0.0).mul_(scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"
