"""Positional encodings: the paper's sinusoid formula, learned positions, RoPE's relative property,
ALiBi's slopes and bias, and the registry of kinds (each kind one class, one line)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from attnlab.config import validate
from attnlab.errors import ConfigError
from attnlab.model import MultiHeadAttention, Transformer, expected_num_parameters
from attnlab.model.positional import (
    POSITIONAL,
    ALiBiBias,
    AttentionPositions,
    LearnedPositions,
    NoPositions,
    PositionalKind,
    Rotary,
    SinusoidalPositions,
    alibi_slopes,
    positional,
)
from fixtures_ckpt import train_reverse

CONF = Path(__file__).resolve().parents[1] / "src" / "attnlab" / "conf"


def test_sinusoidal_matches_the_paper_formula():
    d, pe = 8, SinusoidalPositions(8, 50).pe
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_offset_continues_the_sequence():
    # Incremental decoding embeds one token at a time at position `offset`.
    pos, x = SinusoidalPositions(8, 20), torch.zeros(1, 6, 8)
    torch.testing.assert_close(pos(x[:, 4:5], offset=4), pos(x)[:, 4:5])


@pytest.mark.parametrize("cls", [SinusoidalPositions, LearnedPositions, NoPositions])
def test_positions_beyond_max_len_are_refused_with_the_key(cls):
    with pytest.raises(ValueError, match="model.max_len=10"):
        cls(8, 10)(torch.zeros(1, 11, 8))


def test_learned_positions_are_parameters_per_position():
    pos = LearnedPositions(8, 10)
    assert [p.shape for p in pos.parameters()] == [torch.Size([10, 8])]
    out = pos(torch.zeros(2, 3, 8))
    torch.testing.assert_close(out[0], pos.embedding.weight[:3])


def test_sinusoidal_table_is_not_saved_in_checkpoints():
    assert SinusoidalPositions(8, 10).state_dict() == {}


def rope_scores(rope: Rotary, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """<R_m q, R_n k>: a query placed at position m against a key at position n."""
    return (rope(q, offset=m) * rope(k, offset=n)).sum(-1)


def test_rope_scores_depend_only_on_relative_position():
    rope = Rotary(d_k=8, max_len=64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    for delta in (0, 1, 5, -3):
        scores = [rope_scores(rope, q, k, m, m - delta) for m in (6, 20, 50)]
        for s in scores[1:]:
            torch.testing.assert_close(s, scores[0], atol=1e-5, rtol=1e-5)
    # ...and do depend on it: the same pair at another distance scores differently.
    assert not torch.allclose(rope_scores(rope, q, k, 10, 10), rope_scores(rope, q, k, 10, 4))


def test_rope_preserves_norms_and_leaves_position_zero_alone():
    rope, x = Rotary(d_k=8, max_len=16), torch.randn(2, 3, 16, 8)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rope(x)[..., 0, :], x[..., 0, :])


def test_rope_offset_equals_slice_of_full_sequence():
    rope, x = Rotary(d_k=8, max_len=16), torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(rope(x[..., 5:6, :], offset=5), rope(x)[..., 5:6, :])


# -- ALiBi (Press et al. 2022) -------------------------------------------------------------------


def test_alibi_slopes_for_8_heads_are_the_papers():
    # "For models with 8 heads, the slopes that we used are the geometric sequence 1/2, 1/4, ..., 1/256."
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(16) == [2 ** (-h / 2) for h in range(1, 17)]  # "starts at 1/sqrt(2)"
    assert alibi_slopes(1) == [1 / 256]


@pytest.mark.parametrize(
    "n_heads,slopes",
    [
        # The 4-head slopes, then every other 8-head slope (1/2, 1/8) until there are 6.
        (6, [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]),
        # The 8-head slopes, then every other 16-head slope (2^-0.5, 2^-1.5, ...) until there are 12.
        (12, [2.0**-h for h in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]),
        (3, [1 / 16, 1 / 256, 1 / 4]),
    ],
)
def test_alibi_slopes_for_a_head_count_not_a_power_of_2(n_heads, slopes):
    assert alibi_slopes(n_heads) == pytest.approx(slopes, rel=1e-12)


def test_alibi_bias_is_minus_slope_times_distance():
    alibi, inf = ALiBiBias(n_heads=2), float("inf")  # slopes 1/16, 1/256
    causal = alibi.score_bias(3, 3, offset=0, causal=True)
    assert causal.shape == (1, 2, 3, 3)
    # m * (j - i) for keys j <= i, the later keys not attended (the causal mask).
    want = torch.tensor([[0.0, -inf, -inf], [-1.0, 0.0, -inf], [-2.0, -1.0, 0.0]])
    torch.testing.assert_close(causal[0, 0], want / 16, rtol=0, atol=0)
    torch.testing.assert_close(causal[0, 1], want / 256, rtol=0, atol=0)
    # The encoder: symmetric, -m * |i - j|.
    both_ways = alibi.score_bias(3, 3, offset=0, causal=False)
    want = -torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    torch.testing.assert_close(both_ways[0, 0], want / 16, rtol=0, atol=0)
    # A decoding step: the query at position 2 (offset 2) against the 3 keys so far is the last row.
    step = alibi.score_bias(1, 3, offset=2, causal=True)
    torch.testing.assert_close(step[0, :, 0], causal[0, :, 2], rtol=0, atol=0)


def test_alibi_puts_nothing_on_the_embeddings_or_in_checkpoints(tiny_config):
    cfg = tiny_config(positional="alibi")
    x = torch.randn(2, 5, cfg.d_model)
    torch.testing.assert_close(positional(cfg).embedding()(x), x, rtol=0, atol=0)
    model = Transformer(cfg)
    assert model.state_dict().keys() == Transformer(tiny_config(positional="none")).state_dict().keys()
    assert expected_num_parameters(cfg) == model.num_parameters()


def alibi_attention(d_model: int = 16, n_heads: int = 4) -> MultiHeadAttention:
    return MultiHeadAttention(d_model, n_heads, attention_dropout=0.0, positions=ALiBiBias(n_heads)).eval()


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_bias_reaches_the_scores_on_both_attention_paths(causal):
    """With W_Q = W_K = 0 every score is 0, so the weights are softmax(bias) alone; the fused
    kernel (a float attn_mask) and the explicit path give the same output."""
    mha, x = alibi_attention(), torch.randn(2, 5, 16)
    with torch.no_grad():
        mha.in_proj.weight[:32].zero_()
        mha.in_proj.bias[:32].zero_()
    with torch.enable_grad():  # training's path: the fused kernel, whatever the length
        fast = mha.self_attention(x, causal=causal)
    mha.keep_weights = True
    explicit = mha.self_attention(x, causal=causal)
    want = mha.positions.score_bias(5, 5, 0, causal).softmax(-1).expand(2, -1, -1, -1)
    torch.testing.assert_close(mha.weights, want)
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_keeps_padded_keys_out_on_both_attention_paths(causal):
    mha, x = alibi_attention(), torch.randn(3, 6, 16)
    lengths = [6, 4, 1]
    mask = (torch.arange(6)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]  # (B, 1, 1, S)
    with torch.enable_grad():  # training's path: the fused kernel, whatever the length
        fast = mha.self_attention(x, mask, causal=causal)
    mha.keep_weights = True
    explicit = mha.self_attention(x, mask, causal=causal)
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=0)
    for b, n in enumerate(lengths):
        assert (mha.weights[b, ..., n:] == 0).all(), "padded keys must get exactly zero weight"
    # ...and changing what sits in the padding changes nothing for the real positions.
    noisy = x.clone()
    noisy[1, 4:] = torch.randn(2, 16)
    torch.testing.assert_close(mha.self_attention(noisy, mask, causal=causal)[1, :4], explicit[1, :4])


# -- every kind, through the registry -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(POSITIONAL))
def test_cached_decoding_gives_the_full_forward_logits(tiny_config, kind):
    """Step by step with the key/value cache (each step at its position offset) = one teacher-forced pass."""
    model = Transformer(tiny_config(positional=kind, n_heads=4)).eval()
    src = torch.tensor([[3, 4, 5, 6, 7, 2], [8, 9, 10, 2, 0, 0]])
    tgt = torch.tensor([[1, 5, 4, 3, 9, 9, 11], [1, 10, 9, 8, 7, 3, 4]])
    with torch.no_grad():
        full = model(src, tgt)
        memory, src_mask = model.encode(src)
        cache = model.start_decoding(memory, src_mask)
        steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(tgt.size(1))], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    # ...and the positions matter: the same tokens later in the prefix give other logits.
    if kind != "none":
        assert not torch.allclose(full[0, 5], full[0, 6], atol=1e-3)


@pytest.mark.parametrize("kind", list(POSITIONAL))
def test_every_registered_kind_is_a_valid_config_and_nothing_else_is(compose_train, kind):
    validate(compose_train(f"model.positional={kind}"))
    with pytest.raises(ConfigError, match=re.escape(f"is not one of {list(POSITIONAL)}")):
        validate(compose_train("model.positional=alibj"))


def test_the_positional_sweep_runs_every_kind():
    sweep = OmegaConf.load(CONF / "sweep" / "positional.yaml")
    assert str(sweep.hydra.sweeper.params["model.positional"]).split(",") == list(POSITIONAL)
    assert (Path(__file__).parents[1] / "conf").resolve() == CONF.resolve()  # conf/ is the package's


def test_checkpoint_keys_of_the_existing_kinds_are_unchanged(tiny_config):
    """Old checkpoints load: position parameters keep their names, and only `learned` has any."""
    base = set(Transformer(tiny_config(positional="none")).state_dict())
    assert not {k for k in base if "position" in k}
    learned = {"src_embed.position.embedding.weight", "tgt_embed.position.embedding.weight"}
    for kind, extra in {"sinusoidal": set(), "learned": learned, "rope": set(), "alibi": set()}.items():
        assert set(Transformer(tiny_config(positional=kind)).state_dict()) == base | extra, kind


class RelativeBucketBias(AttentionPositions):
    """A small T5-style bias: one learned scalar per head and clipped relative distance."""

    def __init__(self, n_heads: int, max_distance: int = 4):
        super().__init__()
        self.max_distance = max_distance
        self.bias = torch.nn.Embedding(2 * max_distance + 1, n_heads)

    def score_bias(self, n_queries, n_keys, offset, causal):
        i = torch.arange(offset, offset + n_queries)[:, None]
        j = torch.arange(n_keys)[None, :]
        bucket = (j - i).clamp(-self.max_distance, self.max_distance) + self.max_distance
        bias = self.bias(bucket).permute(2, 0, 1)  # (h, Tq, Tk)
        return (bias.masked_fill(j > i, float("-inf")) if causal else bias)[None]


class RelativeBuckets(PositionalKind):
    def self_attention(self) -> AttentionPositions:
        return RelativeBucketBias(self.cfg.n_heads)


def test_a_new_kind_is_one_class_and_one_registry_line(tiny_config, compose_train, monkeypatch):
    monkeypatch.setitem(POSITIONAL, "buckets", RelativeBuckets)  # the one line
    validate(compose_train("model.positional=buckets"))
    model = Transformer(tiny_config(positional="buckets", n_heads=4)).eval()
    # Every self-attention layer has its own table, cross-attention none; the embeddings add nothing.
    tables = [k for k in model.state_dict() if k.endswith("positions.bias.weight")]
    assert len(tables) == 4 and all(".self_attn." in k for k in tables)
    src, tgt = torch.tensor([[3, 4, 5, 6, 2]]), torch.tensor([[1, 6, 5, 4, 3]])
    with torch.no_grad():
        before = model(src, tgt)
        model.decoder.layers[0].self_attn.positions.bias.weight.normal_()
        after = model(src, tgt)
        memory, src_mask = model.encode(src)
        cache = model.start_decoding(memory, src_mask)
        steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(tgt.size(1))], dim=1)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(steps, after, atol=1e-5, rtol=0)


# -- learning --------------------------------------------------------------------------------------


def test_alibi_learns_reverse(tmp_path):
    """Positions from the attention bias alone are enough to reverse: the encoder finds a token's
    distance to the end through its decaying attention to EOS, the decoder its step through BOS.
    The fixture's reverse task and budget; `positional=none` stays near 0 under it. Four heads,
    so the slopes reach 1/4 (two heads would only have 1/16 and 1/256)."""
    torch.set_num_threads(1)
    run = train_reverse(tmp_path, epochs=8, positional="alibi", n_heads=4)
    metrics = json.loads((run / "fit_metrics.json").read_text())
    assert metrics["val/exact_match"] >= 0.9, metrics
