"""Positional encodings: the paper's sinusoid formula, learned positions, and RoPE's relative property."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.model.positional import LearnedPositions, NoPositions, Rotary, SinusoidalPositions


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
