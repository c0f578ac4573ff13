"""`model.d_head`: the per-head query/key width d_k on its own (Table 3 row B of Vaswani et al.).

Only queries and keys narrow: values keep d_v = d_model / h, so W_O and every layer's output stay
d_model wide, and the scores are divided by sqrt(d_head). Checked here: the shapes of W_Q, W_K
against W_V, the parameter and FLOP counts by formula, that d_head = d_model / h is the default
model exactly, the scale, the caches and searches, RoPE, and the Hydra key.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.config import ConfigError, model_config, validate
from attnlab.decoding import decode
from attnlab.model import MultiHeadAttention, Transformer, TransformerConfig, expected_num_parameters
from attnlab.model.attention import attention_by_sums, attention_weights
from attnlab.model.positional import AttentionPositions
from attnlab.perf.flops import forward_gemms, total_flops

PAD, BOS, EOS = 0, 1, 2


def random_sources(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """n sentences of 3..9 random content tokens + EOS, right-padded: (n, S)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (n,), generator=g).tolist()
    rows = [torch.cat([torch.randint(3, vocab, (length,), generator=g), torch.tensor([EOS])]) for length in lengths]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD)


def attention_count(cfg: TransformerConfig) -> int:
    return cfg.encoder_layers + 2 * cfg.decoder_layers  # decoder layers: self and cross


# -- shapes and parameters ---------------------------------------------------------------------


def test_queries_and_keys_narrow_values_and_w_o_keep_d_model(tiny_config):
    cfg = tiny_config(d_model=16, n_heads=2, d_head=3)
    assert (cfg.d_k, cfg.d_v) == (3, 8)
    model = Transformer(cfg).eval()
    for mha in [m for m in model.modules() if isinstance(m, MultiHeadAttention)]:
        w_q, w_k, w_v = mha.in_proj.weight.split(mha.widths)
        assert w_q.shape == w_k.shape == (2 * 3, 16)  # (h*d_head, d_model)
        assert w_v.shape == (16, 16)  # (h*d_v, d_model)
        assert mha.in_proj.bias.shape == (2 * 2 * 3 + 16,)
        assert mha.out_proj.weight.shape == (16, 16)  # W_O: h*d_v -> d_model
    src, tgt = random_sources(3, 13), torch.tensor([[BOS, 4, 5, 6]] * 3)
    memory, mask = model.encode(src)
    k, v = model.decoder.layers[0].src_attn.project_kv(memory)
    assert k.shape == (3, 2, src.size(1), 3) and v.shape == (3, 2, src.size(1), 8)
    assert model(src, tgt).shape == (3, 4, 13)
    maps = model.attention_maps(src, tgt)
    assert maps["cross"][0].shape == (3, 2, 4, src.size(1))


@pytest.mark.parametrize(
    "overrides",
    [
        {"d_head": 3},
        {"d_head": 20, "positional": "learned", "tie_embeddings": "none"},
        {"d_head": 2, "n_heads": 4, "positional": "rope", "norm": "pre", "tie_embeddings": "all"},
        {"d_head": 5, "encoder_layers": 0, "decoder_layers": 3},
    ],
)
def test_parameter_count_by_formula(tiny_config, overrides):
    cfg = tiny_config(**overrides)
    default = tiny_config(**{**overrides, "d_head": None})
    h, d, dk = cfg.n_heads, cfg.d_model, cfg.d_head
    # Only W_Q and W_K (weights and biases) change: 2 * h * (d_head - d_model/h) rows of d + 1 each.
    delta = attention_count(cfg) * 2 * h * (dk - d // h) * (d + 1)
    assert Transformer(cfg).num_parameters() == Transformer(default).num_parameters() + delta
    assert expected_num_parameters(cfg) == expected_num_parameters(default) + delta


@pytest.mark.parametrize("d_head,paper_millions", [(16, 58), (32, 60)])
def test_table3_row_b_parameter_counts(d_head, paper_millions):
    """The paper's row B: 65M parameters at base, 58M with d_k = 16, 60M with d_k = 32. Our base
    counts 63.1M (the paper's vocabulary and rounding are not exact), but the differences agree."""
    base = TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000, tie_embeddings="all")
    cfg = TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000, tie_embeddings="all", d_head=d_head)
    expected = 63_082_496 - 18 * 2 * 8 * (64 - d_head) * (512 + 1)  # 18 attentions in 6+6 layers
    assert expected_num_parameters(cfg) == expected
    assert round((expected_num_parameters(base) - expected) / 1e6) == 65 - paper_millions
    with torch.device("meta"):  # shapes only
        assert Transformer(cfg).num_parameters() == expected


def test_flops_follow_d_head(tiny_config):
    cfg = tiny_config(d_model=16, d_ff=40, n_heads=4, d_head=3, encoder_layers=2, decoder_layers=3)
    B, S, T = 3, 7, 5
    d, f, V, h, dk, dv = 16, 40, cfg.tgt_vocab_size, 4, 3, 4
    qk, v = h * dk, h * dv
    weights = 2 * B * S * 2 * (d * (2 * qk + v) + v * d + 2 * d * f)  # encoder: W_QKV, W_O, FFN
    weights += 2 * B * T * 3 * (d * (2 * qk + v) + v * d + 2 * d * f)  # decoder self-attention, FFN
    weights += 2 * B * T * 3 * (d * qk + v * d) + 2 * B * S * 3 * d * (qk + v)  # cross: Q, W_O; K|V
    weights += 2 * B * T * d * V  # output layer
    # Q K^T sums over d_k, P V over the keys into d_v.
    attention = 2 * B * h * (dk + dv) * (2 * S * S + 3 * (T * T + T * S))
    assert total_flops(forward_gemms(cfg, B, S, T)) == weights + attention


# -- the default is d_head = d_model / h ----------------------------------------------------------


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_explicit_default_d_head_is_the_same_model(tiny_config, positional):
    """Same seed, d_head unset and d_head = d_model / h: the same weights and the same outputs."""
    torch.manual_seed(7)
    implicit = Transformer(tiny_config(positional=positional)).eval()
    torch.manual_seed(7)
    explicit = Transformer(tiny_config(positional=positional, d_head=8)).eval()
    for (name, a), (_, b) in zip(implicit.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    src, tgt = random_sources(4, 13), torch.tensor([[BOS, 5, 6, 7, 8]] * 4)
    assert torch.equal(implicit(src, tgt), explicit(src, tgt))


# -- attention: the scale and both attention products ---------------------------------------------


def reference_attention(mha: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's formula with separate W_Q, W_K, W_V: softmax(Q K^T / sqrt(d_head)) V, then W_O."""
    (w_q, w_k, w_v), (b_q, b_k, b_v) = mha.in_proj.weight.split(mha.widths), mha.in_proj.bias.split(mha.widths)
    B, T, _ = x.shape
    q = (x @ w_q.T + b_q).view(B, T, mha.n_heads, mha.d_k).transpose(1, 2)
    k = (x @ w_k.T + b_k).view(B, T, mha.n_heads, mha.d_k).transpose(1, 2)
    v = (x @ w_v.T + b_v).view(B, T, mha.n_heads, mha.d_v).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(mha.d_k)).masked_fill(~mask, float("-inf"))
    heads = scores.softmax(-1) @ v  # (B, h, T, d_v)
    return mha.out_proj(heads.transpose(1, 2).reshape(B, T, mha.n_heads * mha.d_v))


@pytest.mark.parametrize("T", [5, 24])  # the explicit matmuls (few queries, no grad) and the fused kernel
def test_scores_are_scaled_by_sqrt_d_head(T):
    mha = MultiHeadAttention(12, 3, attention_dropout=0.0, positions=AttentionPositions(), d_k=5).double().eval()
    torch.nn.init.normal_(mha.in_proj.bias)  # a misplaced bias slice shows
    x = torch.randn(2, T, 12, dtype=torch.double)
    mask = torch.ones(2, 1, 1, T, dtype=torch.bool)
    mask[1, ..., T - 2 :] = False
    want = reference_attention(mha, x, mask)
    with torch.no_grad():
        torch.testing.assert_close(mha.self_attention(x, mask), want)


def test_attention_by_sums_takes_values_of_their_own_width():
    """The compiled beam step's attention (products and sums) with d_k = 3, d_v = 7."""
    q, k, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 6, 3), torch.randn(2, 4, 6, 7)
    mask = torch.rand(2, 1, 1, 6) > 0.3
    mask[..., 0] = True
    out = attention_by_sums(q, k, v, mask)
    assert out.shape == (2, 4, 3, 7)
    torch.testing.assert_close(out, attention_weights(q, k, mask, False) @ v)


# -- decoding: the caches hold keys and values of different widths ---------------------------------


@pytest.mark.parametrize("d_head", [16, 8, 32])
@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_cached_decoding_equals_uncached(tiny_config, d_head, positional, strategy):
    """d_model 64, 4 heads: d_head = 16 is d_model / h set explicitly; 8 and 32 make the keys
    narrower and wider than the values (16), so a cache that mixed up their widths would fail."""
    model = Transformer(tiny_config(d_model=64, d_ff=64, n_heads=4, d_head=d_head, positional=positional)).eval()
    src = random_sources(5, 13)
    settings = dict(strategy=strategy, beam_size=3, n_best=3 if strategy == "beam" else 1, length_penalty=0.6,
                    max_len_b=6, min_len=4)  # fmt: skip
    cached, cached_scores = decode(model, src, **settings)
    plain, plain_scores = decode(model, src, **settings, use_cache=False)
    assert cached.size(2) >= 5 and torch.equal(cached, plain)
    torch.testing.assert_close(cached_scores, plain_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_indirect_cache_decodes_like_no_cache_when_keys_are_narrower_than_values(tiny_config, monkeypatch, strategy):
    """d_head = 8 against d_v = 16: the indirect cache (decode.compile's, run eagerly here) stores
    keys and values at their own widths and gives the uncached tokens."""
    model = Transformer(tiny_config(d_model=64, d_ff=64, n_heads=4, d_head=8, positional="rope")).eval()
    src = random_sources(6, 13, seed=4)
    settings = dict(strategy=strategy, beam_size=3, n_best=3 if strategy == "beam" else 1, length_penalty=0.6,
                    max_len_b=6, min_len=4)  # fmt: skip
    plain, plain_scores = decode(model, src, **settings, use_cache=False)
    caches = []

    def start_indirect(memory, src_mask, capacity=None, indirect=False):
        cache = Transformer.start_decoding(model, memory, src_mask, capacity, indirect=True)
        caches.append(cache)
        return cache

    monkeypatch.setattr(model, "start_decoding", start_indirect)
    indirect, indirect_scores = decode(model, src, **settings)
    kv = caches[0].self_kv[0]
    assert type(kv).__name__ == "IndirectKVCache" and (kv.k.size(-1), kv.v.size(-1)) == (8, 16)
    assert torch.equal(indirect, plain)
    torch.testing.assert_close(indirect_scores, plain_scores, atol=1e-5, rtol=0)


@pytest.mark.slow  # Inductor compiles several graphs
def test_compiled_step_with_d_head_gives_the_eager_results(tiny_config):
    """decode.compile: the compiled greedy step (matmuls) and beam step (attention by sums over the
    indirect cache) with keys narrower than values give the eager tokens."""
    model = Transformer(tiny_config(d_model=32, d_ff=32, n_heads=4, d_head=4, positional="rope")).eval()
    src = random_sources(4, 13, seed=3)
    for settings in (dict(strategy="greedy"), dict(strategy="beam", beam_size=3, n_best=2)):
        want_tokens, want_scores = decode(model, src, max_len_b=5, min_len=4, **settings)
        tokens, scores = decode(model, src, max_len_b=5, min_len=4, compile=True, **settings)
        assert torch.equal(tokens, want_tokens), settings
        torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=0)


# -- RoPE and validation --------------------------------------------------------------------------


def test_rope_rotates_queries_and_keys_over_d_head(tiny_config):
    """d_model / h = 3 is odd, but RoPE rotates only queries and keys: an even d_head is enough."""
    cfg = tiny_config(d_model=12, n_heads=4, d_head=4, positional="rope")
    model = Transformer(cfg)
    assert model.encoder.layers[0].self_attn.positions.cos.shape == (cfg.max_len, 4)
    assert model(random_sources(2, 13), torch.tensor([[BOS, 4, 5]] * 2)).shape == (2, 3, 13)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"d_head": 5, "positional": "rope"}, "model.d_head=5"),
        ({"d_head": 0}, "model.d_head must be >= 1"),
        ({"d_head": -4}, "model.d_head must be >= 1"),
    ],
)
def test_impossible_d_head_is_rejected_naming_the_key(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# -- the Hydra key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "small", "base"])
def test_model_d_head_composes_and_validates(compose_train, model):
    assert compose_train(f"model={model}").model.d_head is None
    cfg = compose_train(f"model={model}", "model.d_head=8")
    assert cfg.model.d_head == 8
    validate(cfg)
    built = model_config(cfg, src_vocab_size=10, tgt_vocab_size=10)
    assert (built.d_k, built.d_v) == (8, cfg.model.d_model // cfg.model.n_heads)


def test_bad_d_head_fails_before_training(compose_train):
    with pytest.raises(Exception, match="model.d_head"):
        compose_train("model.d_head=wide")  # a type error at composition
    with pytest.raises(ConfigError, match="model.d_head=7"):
        validate(compose_train("model.positional=rope", "model.d_head=7"))
