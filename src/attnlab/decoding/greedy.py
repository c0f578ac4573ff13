"""Greedy decoding: at each step keep the single most probable next token."""

from __future__ import annotations

import torch

from ..model import Transformer
from .stepper import make_stepper
from .topk import topk


def output_limits(
    model: Transformer, src: torch.Tensor, max_len: int | None = None, max_len_a: float = 1.0, max_len_b: int = 50
) -> torch.Tensor:
    """Most output tokens (EOS included) each sentence may get: (B,) int64.

    `max_len` fixes it for all; otherwise a * source length + b (the paper: input + 50).
    Never more than the model's positions allow: the decoder reads BOS and all but the
    last output token, so an output of model.max_len tokens uses positions 0..max_len-1.
    """
    cfg = model.config
    if max_len is None:
        src_len = (src != cfg.pad_id).sum(dim=1)
        limit = (max_len_a * src_len).long() + max_len_b
    else:
        limit = torch.full((src.size(0),), max_len, dtype=torch.long, device=src.device)
    return limit.clamp(1, cfg.max_len)


def next_token_log_probs(
    model: Transformer, logits: torch.Tensor, step: int, limits: torch.Tensor, min_len: int, normalize: bool = True
) -> torch.Tensor:
    """log softmax of the next token (N, V) for output position `step` (0-based), written
    over `logits` when they are fp32 (the decoders' own step output: a copy would cost more).

    PAD and BOS are never outputs; EOS is forbidden before `min_len` tokens and is the
    only choice at a row's length limit (the limit wins over `min_len`).

    `normalize=False` applies the same rules to the logits themselves and skips the log
    softmax, for a caller that needs only the argmax (the softmax shifts a row by a constant):
    the values returned are then logits, not log-probabilities.
    """
    cfg = model.config
    logp = logits.float().contiguous()
    if normalize:
        torch.log_softmax(logp, dim=-1, out=logp)
    eos_logp = logp[:, cfg.eos_id].clone()
    logp[:, cfg.pad_id] = float("-inf")
    logp[:, cfg.bos_id] = float("-inf")
    if step < min_len:
        logp[:, cfg.eos_id] = float("-inf")
    at_limit = step + 1 >= limits  # (N,)
    if at_limit.any():
        logp[at_limit] = float("-inf")
        logp[at_limit, cfg.eos_id] = eos_logp[at_limit]
    return logp


@torch.no_grad()
def greedy_search(
    model: Transformer,
    src: torch.Tensor,
    max_len: int | None = None,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    min_len: int = 0,
    with_scores: bool = False,
    use_cache: bool = True,
    compile: bool = False,
):
    """src (B, S) -> output tokens (B, T<=limit), EOS included, padded with pad_id.

    With `with_scores`, also returns each output's total log-probability (B,). A sentence
    leaves the batch as soon as it emits EOS, so later steps cost only the unfinished ones.
    `compile`: the cached decoder step under torch.compile (decode.compile).
    """
    cfg = model.config
    B, device = src.size(0), src.device
    memory, src_mask = model.encode(src)
    limits = output_limits(model, src, max_len, max_len_a, max_len_b)
    L = int(limits.max())
    stepper = make_stepper(model, memory, src_mask, use_cache, steps=L, compile=compile)
    out = src.new_full((B, L), cfg.pad_id)
    scores = torch.zeros(B, device=device)
    alive = torch.arange(B, device=device)  # original rows still decoding
    last = src.new_full((B,), cfg.bos_id)
    for step in range(out.size(1)):
        logp = next_token_log_probs(model, stepper.step(last), step, limits[alive], min_len, with_scores)
        best_logp, best = (t[:, 0] for t in topk(logp, 1))  # (A,): topk, not max(): max with indices is slower on CPU
        out[alive, step] = best
        if with_scores:
            scores[alive] += best_logp
        going = best != cfg.eos_id
        if not going.all():
            if not going.any():
                out = out[:, : step + 1]
                break
            keep = going.nonzero()[:, 0]
            stepper.reorder(keep, keep)
            alive, best = alive[keep], best[keep]
        last = best
    return (out, scores) if with_scores else out
