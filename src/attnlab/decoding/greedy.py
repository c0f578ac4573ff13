"""Greedy decoding: at each step keep the single most probable next token."""

from __future__ import annotations

import torch

from ..model import Transformer


def output_limits(
    model: Transformer, src: torch.Tensor, max_len: int | None = None, max_len_a: float = 1.0, max_len_b: int = 50
) -> torch.Tensor:
    """Most output tokens (EOS included) each sentence may get: (B,) int64.

    `max_len` fixes it for all; otherwise a * source length + b (the paper: input + 50).
    Never more than the model's positions allow (BOS takes position 0).
    """
    cfg = model.config
    if max_len is None:
        src_len = (src != cfg.pad_id).sum(dim=1)
        limit = (max_len_a * src_len).long() + max_len_b
    else:
        limit = torch.full((src.size(0),), max_len, dtype=torch.long, device=src.device)
    return limit.clamp(1, cfg.max_len - 1)


def next_token_log_probs(
    model: Transformer, tokens: torch.Tensor, cache, step: int, limits: torch.Tensor, min_len: int
) -> torch.Tensor:
    """log softmax of the next token (N, V), with EOS forbidden before `min_len` and
    forced at each row's length limit (the last step a row may take)."""
    cfg = model.config
    eos = cfg.eos_id
    logp = model.decode_step(tokens, cache).float().log_softmax(dim=-1)
    logp[:, [cfg.pad_id, cfg.bos_id]] = float("-inf")  # never outputs
    if step < min_len:
        logp[:, eos] = float("-inf")
    at_limit = step + 1 >= limits
    if at_limit.any():
        eos_logp = logp[:, eos].clone()
        logp[at_limit] = float("-inf")
        logp[:, eos] = torch.where(at_limit, eos_logp, logp[:, eos])
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
):
    """src (B, S) -> output tokens (B, T<=limit), EOS included, padded with pad_id.

    With `with_scores`, also returns each output's total log-probability (B,).
    """
    cfg = model.config
    memory, src_mask = model.encode(src)
    cache = model.start_decoding(memory, src_mask)
    limits = output_limits(model, src, max_len, max_len_a, max_len_b)
    B = src.size(0)
    tokens = src.new_full((B, 1), cfg.bos_id)
    scores = torch.zeros(B, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    for step in range(int(limits.max())):
        logp = next_token_log_probs(model, tokens[:, -1], cache, step, limits, min_len)
        best_logp, best = logp.max(dim=-1)
        scores += best_logp.masked_fill(finished, 0.0)
        best = best.masked_fill(finished, cfg.pad_id)
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        finished |= best == cfg.eos_id
        if finished.all():
            break
    out = tokens[:, 1:]
    return (out, scores) if with_scores else out
