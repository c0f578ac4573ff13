"""Beam search: keep the `beam_size` most probable partial translations at each step.

All sentences are decoded together as B x K rows; the bookkeeping (choosing survivors,
moving finished hypotheses into a per-sentence pool of the K best) is done with topk and
gather, never a Python loop over hypotheses.
"""

from __future__ import annotations

import torch

from ..model import Transformer
from .greedy import next_token_log_probs, output_limits


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6)^alpha; alpha=0 ranks by log-probability."""
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
):
    """src (B, S) -> tokens (B, n_best, T) padded with pad_id, log-probabilities (B, n_best).

    Hypotheses are ranked by log-probability / lp(length) and returned best first. A
    sentence stops once `beam_size` hypotheses have ended with EOS (as in fairseq).
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size=}, {n_best=}")
    cfg, K = model.config, beam_size
    B, device = src.size(0), src.device
    memory, src_mask = model.encode(src)
    cache = model.start_decoding(memory.repeat_interleave(K, 0), src_mask.repeat_interleave(K, 0))
    limits = output_limits(model, src, max_len, max_len_a, max_len_b).repeat_interleave(K)
    L = int(limits.max()) + 1
    seqs = src.new_full((B * K, L), cfg.pad_id)  # (B*K, L): BOS + output so far
    seqs[:, 0] = cfg.bos_id
    beam_logp = torch.full((B, K), float("-inf"), device=device)
    beam_logp[:, 0] = 0.0  # all beams start identical: expand only the first
    pool_rank = torch.full((B, K), float("-inf"), device=device)  # finished: score / lp
    pool_logp = torch.full((B, K), float("-inf"), device=device)
    pool_seqs = seqs.view(B, K, L).clone()
    first_row = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    for step in range(L - 1):
        logp = next_token_log_probs(model, seqs[:, step], cache, step, limits, min_len)  # (B*K, V)
        V = logp.size(-1)
        cand = (beam_logp.masked_fill(done[:, None], float("-inf"))[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        # 2K candidates guarantee K that do not end here, whatever the number of EOS among them.
        top_logp, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        parent, token = top_idx // V, top_idx % V
        ends = token == cfg.eos_id

        # Hypotheses that end now, from the top K candidates, join the pool if good enough.
        rows = (first_row + parent[:, :K]).view(-1)
        ended = seqs[rows].view(B, K, L)
        ended[:, :, step + 1] = cfg.eos_id
        ended_logp = top_logp[:, :K].masked_fill(~ends[:, :K], float("-inf"))
        ended_rank = ended_logp / length_penalty(step + 1, length_penalty_alpha)
        pool_rank, keep = torch.cat([pool_rank, ended_rank], 1).topk(K, dim=1)
        pool_logp = torch.cat([pool_logp, ended_logp], 1).gather(1, keep)
        pool_seqs = torch.cat([pool_seqs, ended], 1).gather(1, keep[:, :, None].expand(B, K, L))

        # The K best candidates that go on become the new beams.
        beam_logp, pick = top_logp.masked_fill(ends, float("-inf")).topk(K, dim=1)
        rows = (first_row + parent.gather(1, pick)).view(-1)
        seqs = seqs[rows]
        seqs[:, step + 1] = token.gather(1, pick).view(-1)
        cache.reorder(rows)

        done |= pool_rank[:, -1] > float("-inf")
        if done.all():
            break

    tokens = pool_seqs[:, :n_best, 1:]
    length = int((tokens != cfg.pad_id).sum(-1).max())
    return tokens[:, :, :length], pool_logp[:, :n_best]
