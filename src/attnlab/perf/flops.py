"""Matrix-multiply FLOPs of one training step, and the machine's matmul rate at those shapes.

The model FLOPs are the matmuls of the architecture (the same for every system, since they
share the hyper-parameters): projections, feed-forward, output layer and the two attention
products, forward x 3 for forward + backward (each forward GEMM C = A B needs dA = dC B^T
and dB = A^T dC). The ceiling times exactly those GEMMs, alone, with torch: the step could
not be faster than that, so model FLOPs utilisation (MFU) = GEMM-only time / step time.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from ..model import TransformerConfig
from .measure import sync


@dataclass(frozen=True)
class Gemm:
    """batch x (m, k) @ (k, n)."""

    m: int
    k: int
    n: int
    batch: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n

    def backward(self) -> tuple[Gemm, Gemm]:
        return Gemm(self.m, self.n, self.k, self.batch), Gemm(self.k, self.m, self.n, self.batch)


def forward_gemms(cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> Counter[Gemm]:
    """The forward matmuls of model(src, tgt_in), counted by shape."""
    d, f, dk, dv = cfg.d_model, cfg.d_ff, cfg.d_k, cfg.d_v
    qk, v = cfg.n_heads * dk, cfg.n_heads * dv  # model.d_head narrows Q and K only
    ns, nt, bh = batch * src_len, batch * tgt_len, batch * cfg.n_heads
    gemms: Counter[Gemm] = Counter()
    for _ in range(cfg.encoder_layers):
        gemms.update([Gemm(ns, d, 2 * qk + v), Gemm(ns, v, d), Gemm(ns, d, f), Gemm(ns, f, d)])
        gemms.update([Gemm(src_len, dk, src_len, bh), Gemm(src_len, src_len, dv, bh)])  # Q K^T, P V
    for _ in range(cfg.decoder_layers):
        gemms.update([Gemm(nt, d, 2 * qk + v), Gemm(nt, v, d), Gemm(nt, d, f), Gemm(nt, f, d)])  # self-attn + FFN
        gemms.update([Gemm(nt, d, qk), Gemm(ns, d, qk + v), Gemm(nt, v, d)])  # cross-attn Q, K|V, W_O
        gemms.update([Gemm(tgt_len, dk, tgt_len, bh), Gemm(tgt_len, tgt_len, dv, bh)])
        gemms.update([Gemm(tgt_len, dk, src_len, bh), Gemm(tgt_len, src_len, dv, bh)])
    gemms[Gemm(nt, d, cfg.tgt_vocab_size)] += 1  # the output layer
    return gemms


def train_gemms(cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> Counter[Gemm]:
    """Forward and backward matmuls of one training step, counted by shape."""
    gemms: Counter[Gemm] = Counter()
    for gemm, count in forward_gemms(cfg, batch, src_len, tgt_len).items():
        for g in (gemm, *gemm.backward()):
            gemms[g] += count
    return gemms


def total_flops(gemms: Counter[Gemm]) -> int:
    return sum(g.flops * count for g, count in gemms.items())


class GemmSuite:
    """Times each distinct GEMM; returns the time all `count`s of them would take.

    Inputs are allocated once, results written in place (`out=`), so only the matmul is timed.
    Each shape takes the fastest of `tries` back-to-back calls: the rate the machine can
    reach at that shape, which a single cold call (or a burst of load) understates.
    """

    def __init__(self, gemms: Counter[Gemm], device: torch.device, dtype: torch.dtype = torch.float32, tries: int = 3):
        self.gemms, self.tries = gemms, tries
        self.buffers = {
            g: (
                torch.randn(g.batch, g.m, g.k, device=device, dtype=dtype),
                torch.randn(g.batch, g.k, g.n, device=device, dtype=dtype),
                torch.empty(g.batch, g.m, g.n, device=device, dtype=dtype),
            )
            for g in gemms
        }
        self.device = device

    def __call__(self) -> float:
        total = 0.0
        for g, (a, b, out) in self.buffers.items():
            fastest = float("inf")
            for _ in range(self.tries):
                sync(self.device)
                start = time.perf_counter()
                torch.bmm(a, b, out=out)
                sync(self.device)
                fastest = min(fastest, time.perf_counter() - start)
            total += fastest * self.gemms[g]
        return total
