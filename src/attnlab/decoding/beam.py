"""Beam search: keep the `beam_size` most probable partial translations at each step.

All sentences are decoded together as A x K rows (A sentences still searching, K beams
each); choosing survivors and moving finished hypotheses into each sentence's pool of
the K best are done with topk and gather, never a Python loop over hypotheses. A
sentence leaves the batch once its pool is full, so later steps cost only the others.
"""

from __future__ import annotations

import torch

from ..model import Transformer
from .config import check_beam
from .greedy import next_token_log_probs, output_limits
from .stepper import make_stepper
from .topk import topk

NEG_INF = float("-inf")


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6)^alpha, |Y| counting EOS; alpha=0 ranks by log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    beam_size: int = 4,
    n_best: int = 1,
    max_len: int | None = None,
    max_len_a: float = 1.0,
    max_len_b: int = 50,
    min_len: int = 0,
    length_penalty_alpha: float = 0.0,
    use_cache: bool = True,
    compile: bool = False,
):
    """src (B, S) -> tokens (B, n_best, T) (EOS included, padded with pad_id), log-probabilities (B, n_best).

    Hypotheses are ranked by log-probability / lp(length) and returned best first; the
    scores returned are the plain log-probabilities. A sentence stops once `beam_size`
    hypotheses have ended with EOS (as in fairseq) or its length limit is reached.
    `compile`: the cached decoder step under torch.compile (decode.compile).
    """
    check_beam("beam", beam_size, n_best)  # decode.*'s own rule: a ConfigError (a ValueError) naming the key
    cfg, K = model.config, beam_size
    B, device = src.size(0), src.device
    memory, src_mask = model.encode(src)
    limits = output_limits(model, src, max_len, max_len_a, max_len_b)  # (B,)
    L = int(limits.max())
    # K rows per sentence after step 0. Compiled, the step reads each hypothesis's keys through
    # its row history (fused into the attention), so keeping the survivors copies no cache
    # (model/cache.py, IndirectKVCache).
    stepper = make_stepper(model, memory, src_mask, use_cache, steps=L, compile=compile, indirect=compile)
    seqs = src.new_full((B * K, L), cfg.pad_id)  # (A*K, L): each beam's output so far
    last = src.new_full((B * K,), cfg.bos_id)
    beam_logp = torch.full((B, K), NEG_INF, device=device)
    beam_logp[:, 0] = 0.0  # all beams start identical: expand only the first
    pool_rank = torch.full((B, K), NEG_INF, device=device)  # finished: log-prob / lp
    pool_logp = torch.full((B, K), NEG_INF, device=device)
    pool_seqs = src.new_full((B, K, L), cfg.pad_id)
    alive = torch.arange(B, device=device)  # sentences still searching

    for step in range(L):
        A = alive.numel()
        if step == 0:  # the K beams of a sentence start as the same BOS: decode it once, then copy
            logits = stepper.step(last[::K]).repeat_interleave(K, 0)
            stepper.reorder(torch.arange(B, device=device).repeat_interleave(K))
        else:
            logits = stepper.step(last)
        logp = next_token_log_probs(model, logits, step, limits[alive].repeat_interleave(K), min_len)  # (A*K, V)
        V = logp.size(-1)
        cand = logp.view(A, K, V).add_(beam_logp[:, :, None]).view(A, K * V)  # in place: logp is ours
        # 2K candidates guarantee K that do not end here: each beam has one EOS candidate.
        top_logp, top_idx = topk(cand, min(2 * K, K * V))  # (A, 2K)
        parent, token = top_idx // V, top_idx % V
        ends = token == cfg.eos_id
        first_row = (torch.arange(A, device=device) * K)[:, None]  # (A, 1)

        if ends[:, :K].any():  # hypotheses ending among the top K join the pool if good enough
            ended = seqs[(first_row + parent[:, :K]).view(-1)].view(A, K, L)
            ended[:, :, step] = cfg.eos_id
            ended_logp = top_logp[:, :K].masked_fill(~ends[:, :K], NEG_INF)
            ended_rank = ended_logp / length_penalty(step + 1, length_penalty_alpha)
            rank, keep = torch.cat([pool_rank[alive], ended_rank], 1).topk(K, dim=1)
            pool_rank[alive] = rank
            pool_logp[alive] = torch.cat([pool_logp[alive], ended_logp], 1).gather(1, keep)
            pool_seqs[alive] = torch.cat([pool_seqs[alive], ended], 1).gather(1, keep[:, :, None].expand(A, K, L))

        # The K best candidates that go on become the new beams.
        beam_logp, pick = top_logp.masked_fill(ends, NEG_INF).topk(K, dim=1)  # (A, K)
        rows = first_row + parent.gather(1, pick)  # (A, K) rows of the parents
        last = token.gather(1, pick)  # (A, K)
        going = (pool_rank[alive, -1] == NEG_INF) & (step + 1 < limits[alive])  # (A,)
        kept = None  # which of the A sentences go on, when some do not
        if not going.all():
            if not going.any():
                break
            kept = going.nonzero()[:, 0]
            alive, beam_logp, rows, last = alive[kept], beam_logp[kept], rows[kept], last[kept]
        rows, last = rows.view(-1), last.view(-1)
        seqs = seqs[rows]
        seqs[:, step] = last
        stepper.reorder(rows, kept)

    tokens = pool_seqs[:, :n_best]
    length = int((tokens != cfg.pad_id).sum(-1).max())
    return tokens[:, :, :length], pool_logp[:, :n_best]
