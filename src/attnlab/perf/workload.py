"""What the benchmark times: one batch, a training step and the two decoders, for any `System`.

Every system gets the same dense batch (no padding, so no system can skip work another does)
and the same step: forward, attnlab's label-smoothed loss, backward, Adam step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..model import TransformerConfig
from .peers import System


@dataclass
class Batch:
    src: torch.Tensor  # (B, S): random ids, EOS last
    tgt_in: torch.Tensor  # (B, T): BOS + the target's first T-1 ids
    tgt_out: torch.Tensor  # (B, T): the target, EOS last

    @property
    def target_tokens(self) -> int:
        return self.tgt_out.numel()


def random_batch(cfg: TransformerConfig, batch_size: int, src_len: int, tgt_len: int, seed: int, device) -> Batch:
    g = torch.Generator().manual_seed(seed)
    low = max(cfg.pad_id, cfg.bos_id, cfg.eos_id) + 1  # ordinary tokens only
    src = torch.randint(low, cfg.src_vocab_size, (batch_size, src_len), generator=g)
    tgt = torch.randint(low, cfg.tgt_vocab_size, (batch_size, tgt_len), generator=g)
    src[:, -1] = tgt[:, -1] = cfg.eos_id
    tgt_in = torch.cat([torch.full_like(tgt[:, :1], cfg.bos_id), tgt[:, :-1]], dim=1)
    return Batch(src.to(device), tgt_in.to(device), tgt.to(device))


def autocast(device: torch.device, precision: str):
    """bf16 autocast (a GPU, or a CPU with bf16 instructions), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, optim: dict) -> torch.optim.Optimizer:
    """Adam as TranslationModule builds it (fused; its schedule is a constant factor here)."""
    return torch.optim.Adam(
        model.parameters(),
        lr=optim["lr"],
        betas=tuple(optim["betas"]),
        eps=optim["eps"],
        weight_decay=optim["weight_decay"],
        fused=True,
    )


class TrainStep:
    """Forward, label-smoothed loss, backward and Adam step of one system on one batch."""

    def __init__(self, system: System, batch: Batch, optim: dict, precision: str = "fp32"):
        self.system, self.batch = system, batch
        self.label_smoothing = optim["label_smoothing"]
        self.optimizer = make_optimizer(system.model, optim)
        self.precision = precision
        self.device = batch.src.device

    def __call__(self) -> None:
        b, model = self.batch, self.system.model
        model.train()
        with autocast(self.device, self.precision):
            loss, _, _, n = self.system.loss(b.src, b.tgt_in, b.tgt_out, self.label_smoothing)
        (loss / n).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class DecodeStep:
    """Greedy (beam_size=1) or beam search over the batch's sources, forced to `length` tokens."""

    def __init__(self, system: System, batch: Batch, length: int, beam_size: int, precision: str = "fp32"):
        self.system, self.src, self.length, self.beam_size = system, batch.src, length, beam_size
        self.precision = precision

    @torch.no_grad()
    def __call__(self) -> torch.Tensor | None:
        self.system.model.eval()
        with autocast(self.src.device, self.precision):
            if self.beam_size == 1:
                return self.system.greedy(self.src, self.length)
            return self.system.beam(self.src, self.length, self.beam_size)

    @property
    def available(self) -> bool:
        """False for a system without beam search (the torch peer)."""
        return self.beam_size == 1 or type(self.system).beam is not System.beam
