"""Scaled dot-product and multi-head attention against their definitions (paper section 3.2)."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.model import MultiHeadAttention
from attnlab.model.attention import attention_weights
from attnlab.model.positional import AttentionPositions

B, T, S, D, H = 3, 5, 7, 16, 4


def make_mha() -> MultiHeadAttention:
    mha = MultiHeadAttention(D, H, attention_dropout=0.0, positions=AttentionPositions()).eval()
    torch.nn.init.normal_(mha.in_proj.bias)  # non-zero biases, so a misplaced bias slice shows
    torch.nn.init.normal_(mha.out_proj.bias)
    return mha


def key_padding_mask(lengths: list[int], width: int) -> torch.Tensor:
    """(B, 1, 1, width): True on each row's first `length` keys."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def both_paths(mha: MultiHeadAttention, run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output of the fused SDPA path, output and weights of the explicit (keep_weights) path."""
    fast = run()
    mha.keep_weights = True
    explicit = run()
    weights = mha.weights
    mha.keep_weights = False
    return fast, explicit, weights


def test_sdpa_and_explicit_paths_agree_with_padding_mask():
    mha, x, memory = make_mha(), torch.randn(B, T, D), torch.randn(B, S, D)
    mask = key_padding_mask([7, 4, 1], S)
    fast, explicit, weights = both_paths(mha, lambda: mha.cross_attention(x, mha.project_kv(memory), mask))
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=0)
    assert weights.shape == (B, H, T, S)


def test_sdpa_and_explicit_paths_agree_causal_self_attention():
    mha, x = make_mha(), torch.randn(B, T, D)
    fast, explicit, weights = both_paths(mha, lambda: mha.self_attention(x, causal=True))
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=0)
    # Causal: query t gives exactly zero weight to every key after t.
    assert (weights.triu(diagonal=1) == 0).all()
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    assert (weights[..., allowed] > 0).all()


def test_sdpa_and_explicit_paths_agree_causal_with_padding_mask():
    mha, x = make_mha(), torch.randn(B, T, D)
    mask = key_padding_mask([5, 3, 2], T)
    fast, explicit, _ = both_paths(mha, lambda: mha.self_attention(x, mask, causal=True))
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=0)


def test_weights_sum_to_one_over_keys_and_are_zero_on_padding():
    mha, x, memory = make_mha(), torch.randn(B, T, D), torch.randn(B, S, D)
    lengths = [7, 4, 1]
    mask = key_padding_mask(lengths, S)
    _, _, weights = both_paths(mha, lambda: mha.cross_attention(x, mha.project_kv(memory), mask))
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))
    for b, n in enumerate(lengths):
        assert (weights[b, ..., n:] == 0).all(), "padded keys must get exactly zero weight"
        assert (weights[b, ..., :n] > 0).all()


def test_attention_weights_is_softmax_of_scaled_scores():
    q, k = torch.randn(2, H, T, 8), torch.randn(2, H, S, 8)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(attention_weights(q, k, None, False), expected)


def reference_multi_head(mha: MultiHeadAttention, query, key, value, mask) -> torch.Tensor:
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O, head_i = Attention(Q W_Q^i, K W_K^i, V W_V^i),
    written with one W_Q / W_K / W_V per head, as in the paper."""
    d_k = D // H
    w_q, w_k, w_v = mha.in_proj.weight.chunk(3)  # the separate projections, rows [W_Q; W_K; W_V]
    b_q, b_k, b_v = mha.in_proj.bias.chunk(3)
    heads = []
    for i in range(H):
        rows = slice(i * d_k, (i + 1) * d_k)
        q = query @ w_q[rows].T + b_q[rows]  # (B, Tq, d_k)
        k = key @ w_k[rows].T + b_k[rows]
        v = value @ w_v[rows].T + b_v[rows]
        scores = q @ k.transpose(1, 2) / math.sqrt(d_k)  # (B, Tq, Tk)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(heads, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias


@pytest.mark.parametrize("keep_weights", [False, True])
def test_self_and_cross_attention_match_the_per_head_reference(keep_weights):
    mha = make_mha()
    mha.keep_weights = keep_weights
    x, memory = torch.randn(B, T, D), torch.randn(B, S, D)
    mask_s, mask_t = key_padding_mask([7, 6, 3], S), key_padding_mask([5, 5, 2], T)
    with torch.no_grad():
        torch.testing.assert_close(mha.self_attention(x, mask_t), reference_multi_head(mha, x, x, x, mask_t))
        torch.testing.assert_close(mha.cross_attention(x, mha.project_kv(memory), mask_s),
                                   reference_multi_head(mha, x, memory, memory, mask_s))  # fmt: skip


CACHES = ["KVCache", "IndirectKVCache"]  # copies rows on reorder / indexes the stored rows


@pytest.mark.parametrize("kind", CACHES)
@pytest.mark.parametrize("capacity", [64, 2], ids=["preallocated", "grows past capacity"])
def test_cached_self_attention_equals_causal_full_sequence(capacity, kind):
    import attnlab.model as m

    mha, x = make_mha(), torch.randn(B, T, D)
    full = mha.self_attention(x, causal=True)
    cache = getattr(m, kind)(capacity)
    steps = [mha.self_attention(x[:, t : t + 1], cache=cache) for t in range(T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == T


@pytest.mark.parametrize("kind", CACHES)
@pytest.mark.parametrize("capacity", [64, 3])
@torch.no_grad()  # as in decoding: the cache is filled without autograd
def test_reordered_cache_equals_the_reordered_sequences(capacity, kind):
    """Rows reordered (and dropped, and multiplied) mid-way, as beam search does: each row then
    continues the history of the row it was copied from, exactly as if that sequence had been
    decoded alone."""
    import attnlab.model as m

    mha, x = make_mha(), torch.randn(4, T, D)
    cache, t0 = getattr(m, kind)(capacity), 2
    for t in range(t0):
        mha.self_attention(x[:, t : t + 1], cache=cache)
    # more rows than stored (beam search after its first step), the same number (spare buffers),
    # then fewer (finished sentences leave), a step after each
    indices = ([2, 2, 0, 1, 3, 1], [5, 0, 0, 1, 3, 4], [3, 0])
    for t, index in enumerate(map(torch.tensor, indices), t0):
        cache.reorder(index)
        x = x[index]
        step = mha.self_attention(x[:, t : t + 1], cache=cache)
        full = mha.self_attention(x, causal=True)[:, t : t + 1]
        torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
    assert cache.length == T


@torch.no_grad()
def test_indirect_cache_reorders_without_moving_stored_keys():
    """IndirectKVCache: a reorder rewrites only the row index; the stored keys and values stay
    where they were written (the copies KVCache makes are what it saves)."""
    from attnlab.model import IndirectKVCache

    mha, x = make_mha(), torch.randn(4, T, D)
    cache = IndirectKVCache(capacity=T)
    for t in range(3):
        mha.self_attention(x[:, t : t + 1], cache=cache)
    stored = cache.k.clone()
    where = cache.k.data_ptr()
    cache.reorder(torch.tensor([3, 3, 1, 0]))
    assert cache.k.data_ptr() == where and torch.equal(cache.k, stored)
    assert cache.history[:, :3].tolist() == [[3, 3, 3], [3, 3, 3], [1, 1, 1], [0, 0, 0]]
    mha.self_attention(x[:, 3:4], cache=cache)  # the new position is stored at the current rows
    assert cache.history[:, 3].tolist() == [0, 1, 2, 3] and torch.equal(cache.k[:3], stored[:3])


def test_grouped_cross_attention_equals_keys_repeated_per_beam():
    """K decoder rows per sentence attend to one copy of its keys/values (beam search)."""
    mha, memory, K = make_mha(), torch.randn(B, S, D), 3
    mask = key_padding_mask([7, 4, 2], S)
    x = torch.randn(B * K, 1, D)
    k, v = mha.project_kv(memory)
    repeated = (k.repeat_interleave(K, 0), v.repeat_interleave(K, 0))
    expected = mha.cross_attention(x, repeated, mask.repeat_interleave(K, 0))
    torch.testing.assert_close(mha.cross_attention(x, (k, v), mask), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="do not group"):
        mha.cross_attention(torch.randn(B * K + 1, 1, D), (k, v), mask)


@pytest.mark.parametrize("queries", [1, 4, 16, 17], ids=lambda n: f"{n} queries")
def test_few_query_path_equals_the_fused_kernel(queries):
    """Decoding steps (no gradients, up to SMALL_QUERY queries per head: one, or a sentence's
    beams) take the explicit matmuls (products and sums below ATen's plain-loop size), longer
    query blocks and training the fused kernel: all give the same attention, with keys given as a
    plain tensor or as a view of transposed storage (the decoder cache)."""
    from attnlab.model.attention import PLAIN_LOOP_BMM, SMALL_QUERY

    assert SMALL_QUERY == 16  # the cases above straddle it
    assert 4 * S * (D // H) < PLAIN_LOOP_BMM <= 16 * S * (D // H)  # and the sums' size: 1 and 4 take them
    mha = make_mha()
    q, k, v = torch.randn(B, H, queries, D // H), torch.randn(B, H, S, D // H), torch.randn(B, H, S, D // H)
    mask = key_padding_mask([7, 4, 2], S)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    k_stored_transposed = k.mT.contiguous().mT
    assert not k_stored_transposed.is_contiguous() and k_stored_transposed.mT.is_contiguous()
    for keys in (k, k_stored_transposed):
        with torch.no_grad():  # decoding: the explicit path when queries are few
            torch.testing.assert_close(mha.attend(q, keys, v, mask, causal=False), reference, atol=1e-6, rtol=0)
        torch.testing.assert_close(mha.attend(q, keys, v, mask, causal=False), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("queries", [1, 4])
def test_attention_by_sums_equals_the_fused_kernel(queries):
    """The compiled decoder step's attention (products and sums, for Inductor to fuse) is the
    same function as the fused kernel, with plain or transposed-storage keys and a padding mask."""
    from attnlab.model.attention import attention_by_sums

    q, k, v = torch.randn(B, H, queries, D // H), torch.randn(B, H, S, D // H), torch.randn(B, H, S, D // H)
    mask = key_padding_mask([7, 4, 2], S)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for keys in (k, k.mT.contiguous().mT):
        torch.testing.assert_close(attention_by_sums(q, keys, v, mask), reference, atol=1e-6, rtol=0)


def test_decoder_cache_keeps_encoder_keys_transposed_through_reorder():
    """start_decoding stores the encoder keys as (B, h, d_k, S) memory so Q K^T needs no copy;
    dropping finished sentences must keep that layout (and the right rows)."""
    from attnlab.model import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(src_vocab_size=11, tgt_vocab_size=11, d_model=D, n_heads=H, d_ff=8,
                                          encoder_layers=1, decoder_layers=2)).eval()  # fmt: skip
    memory, mask = model.encode(torch.randint(4, 11, (B, S)))
    cache = model.start_decoding(memory, mask)
    expected = [layer.src_attn.project_kv(memory) for layer in model.decoder.layers]
    keep = torch.tensor([2, 0])
    cache.reorder(torch.tensor([4, 5, 0, 1]), keep)  # 2 decoder rows per sentence, sentence 1 leaves
    for (k, v), (k_ref, v_ref) in zip(cache.memory_kv, expected):
        assert k.mT.is_contiguous() and v.is_contiguous()
        torch.testing.assert_close(k, k_ref[keep])
        torch.testing.assert_close(v, v_ref[keep])
    torch.testing.assert_close(cache.src_mask, mask[keep])


def test_attention_dropout_only_in_training():
    mha = MultiHeadAttention(D, H, attention_dropout=0.5, positions=AttentionPositions())
    x = torch.randn(B, T, D)
    mha.eval()
    torch.testing.assert_close(mha.self_attention(x), mha.self_attention(x))
    mha.train()
    assert not torch.allclose(mha.self_attention(x), mha.self_attention(x))
