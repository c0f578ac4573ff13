"""The transformer and its ablation switches: masking holds for every switch combination,
and each switch changes exactly what it says."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnlab.model import Transformer, TransformerConfig, expected_num_parameters
from attnlab.model.layers import EncoderLayer, SublayerConnection
from attnlab.model.positional import POSITIONAL

PAD = 0
GRID = list(itertools.product(list(POSITIONAL), ["post", "pre"], [True, False], ["none", "decoder", "all"]))


def grid_model(tiny_config, positional, norm, residual, tie) -> Transformer:
    """In float64, so "unchanged" can be checked to 1e-10, far below any real influence."""
    cfg = tiny_config(positional=positional, norm=norm, residual=residual, tie_embeddings=tie)
    return Transformer(cfg).double().eval()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def assert_differ(a: torch.Tensor, b: torch.Tensor, residual: bool) -> None:
    """The invariance checks can fail: positions that may see a change do change.

    Only checked with residuals: without them a random model's stacked attention averages
    its inputs into near-identical rows (rank collapse), and inputs move the logits by less
    than 1e-9. For those models `test_attention_maps_respect_every_mask` checks the masks.
    """
    if residual:
        assert (a - b).abs().max() > 1e-3


def random_tokens(shape, vocab=13) -> torch.Tensor:
    return torch.randint(3, vocab, shape)  # no pad/bos/eos inside sentences


@pytest.mark.parametrize("positional,norm,residual,tie", GRID)
def test_decoder_is_causal(tiny_config, positional, norm, residual, tie):
    model = grid_model(tiny_config, positional, norm, residual, tie)
    src, tgt = random_tokens((2, 6)), random_tokens((2, 7))
    with torch.no_grad():
        logits = model(src, tgt)
        for t in (0, 3, 5):
            changed = tgt.clone()
            changed[:, t + 1 :] = random_tokens(changed[:, t + 1 :].shape)
            assert not torch.equal(changed, tgt)
            assert_same(model(src, changed)[:, : t + 1], logits[:, : t + 1])
            # The check can fail: later positions do see the changed tokens.
            assert_differ(model(src, changed)[:, t + 1 :], logits[:, t + 1 :], residual)


@pytest.mark.parametrize("positional,norm,residual,tie", GRID)
def test_padding_does_not_change_real_positions(tiny_config, positional, norm, residual, tie):
    model = grid_model(tiny_config, positional, norm, residual, tie)
    src, tgt = random_tokens((3, 8)), random_tokens((3, 6))
    src[1, 5:], src[2, 2:] = PAD, PAD
    tgt[1, 4:], tgt[2, 1:] = PAD, PAD
    real_tgt = tgt != PAD
    with torch.no_grad():
        logits = model(src, tgt)
        # Each row alone, without any padding, gives the same outputs at its real positions.
        for b in range(3):
            alone = model(src[b : b + 1][src[b : b + 1] != PAD][None], tgt[b][real_tgt[b]][None])
            assert_same(alone[0], logits[b][real_tgt[b]])
        # Garbage in the padded slots (after embedding, so the mask still marks them) changes nothing real.
        hooks = [module.register_forward_hook(_noise_on_padding) for module in (model.src_embed, model.tgt_embed)]
        try:
            noisy = model(src, tgt)
        finally:
            for h in hooks:
                h.remove()
        assert_same(noisy[real_tgt], logits[real_tgt])
        assert_differ(noisy[~real_tgt], logits[~real_tgt], residual)


def _noise_on_padding(module, args, output):
    padded = (args[0] == PAD)[..., None]  # (B, T, 1)
    return output + padded * 10 * torch.randn_like(output)


@pytest.mark.parametrize("positional,norm,residual,tie", GRID)
def test_attention_maps_respect_every_mask(tiny_config, positional, norm, residual, tie):
    model = grid_model(tiny_config, positional, norm, residual, tie)
    src, tgt = random_tokens((2, 6)), random_tokens((2, 5))
    src[1, 3:] = PAD
    maps = model.attention_maps(src, tgt)
    future = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)
    for weights in maps["encoder_self"] + maps["cross"]:
        assert (weights[1, ..., 3:] == 0).all() and (weights[1, ..., :3] > 0).all()
        assert (weights[0] > 0).all()
    for weights in maps["decoder_self"]:
        assert (weights[..., future] == 0).all() and (weights[..., ~future] > 0).all()
    for weights in maps["encoder_self"] + maps["cross"] + maps["decoder_self"]:
        assert_same(weights.sum(-1), torch.ones_like(weights.sum(-1)))


@pytest.mark.parametrize("positional", list(POSITIONAL))
def test_only_positional_none_makes_the_encoder_permutation_equivariant(tiny_config, positional):
    equivariant = positional == "none"
    model = Transformer(tiny_config(positional=positional)).eval()
    src = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
    perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    with torch.no_grad():
        memory, _ = model.encode(src)
        permuted, _ = model.encode(src[:, perm])
    assert torch.allclose(permuted, memory[:, perm], atol=1e-5) == equivariant


def zeroed_sublayer(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_residual_false_removes_the_skip_path(norm):
    x = torch.randn(2, 3, 16)
    with_skip = SublayerConnection(16, dropout=0.0, norm=norm, residual=True)
    without = SublayerConnection(16, dropout=0.0, norm=norm, residual=False)
    # A sublayer that outputs zeros: only the skip path can carry x through.
    kept = with_skip(x, zeroed_sublayer)
    expected = x if norm == "pre" else torch.nn.functional.layer_norm(x, (16,))
    torch.testing.assert_close(kept, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(without(x, zeroed_sublayer), torch.zeros_like(x))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_residual_false_on_an_encoder_layer(tiny_config, norm):
    x = torch.randn(2, 3, 16)
    mask = torch.ones(2, 1, 1, 3, dtype=torch.bool)
    outputs = {}
    for residual in (True, False):
        layer = EncoderLayer(tiny_config(norm=norm, residual=residual)).eval()
        with torch.no_grad():  # zero W_O and W_2: both sublayers now output exactly zero
            for linear in (layer.self_attn.out_proj, layer.feed_forward.w_2):
                linear.weight.zero_()
                linear.bias.zero_()
        outputs[residual] = layer(x, mask)
    assert outputs[True].abs().min() > 0 and torch.allclose(outputs[True].norm(), x.norm(), rtol=0.2)
    torch.testing.assert_close(outputs[False], torch.zeros_like(x))


def test_pre_and_post_norm_differ_in_where_the_norm_sits():
    x = torch.randn(2, 3, 16)
    post = SublayerConnection(16, 0.0, "post", True)
    pre = SublayerConnection(16, 0.0, "pre", True)
    double = lambda y: 2 * y
    # post: LayerNorm(x + 2x); pre: x + 2 LayerNorm(x)
    ln = lambda y: torch.nn.functional.layer_norm(y, (16,))
    torch.testing.assert_close(post(x, double), ln(3 * x), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre(x, double), x + 2 * ln(x), atol=1e-5, rtol=0)


def test_pre_and_post_norm_models_compute_different_functions_with_the_same_weights(tiny_config):
    post = Transformer(tiny_config(norm="post")).eval()
    pre = Transformer(tiny_config(norm="pre")).eval()
    missing, unexpected = pre.load_state_dict(post.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(
        f"{stack}.final_norm.{p}" for stack in ("encoder", "decoder") for p in ("weight", "bias")
    )
    src, tgt = random_tokens((2, 5)), random_tokens((2, 4))
    with torch.no_grad():
        assert not torch.allclose(pre(src, tgt), post(src, tgt), atol=1e-3)


@pytest.mark.parametrize("tie", ["none", "decoder", "all"])
def test_tie_embeddings_shares_storage(tiny_config, tie):
    model = Transformer(tiny_config(tie_embeddings=tie))
    src, tgt, out = (m.weight.data_ptr() for m in (model.src_embed.token, model.tgt_embed.token, model.generator))
    assert (tgt == out) == (tie != "none")
    assert (src == tgt) == (tie == "all")
    assert len({src, tgt, out}) == {"none": 3, "decoder": 2, "all": 1}[tie]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positional": "learned"},
        {"norm": "pre", "tie_embeddings": "none"},
        {"tie_embeddings": "all", "encoder_layers": 0, "decoder_layers": 3},
        {"src_vocab_size": 50, "tgt_vocab_size": 70, "d_ff": 48, "n_heads": 4},
        {"positional": "rope", "residual": False, "norm": "pre", "tie_embeddings": "all"},
        {"positional": "alibi", "n_heads": 4},
    ],
)
def test_parameter_count_matches_the_formula(tiny_config, overrides):
    cfg = tiny_config(**overrides)
    assert Transformer(cfg).num_parameters() == expected_num_parameters(cfg)


def test_transformer_base_with_shared_37k_vocabulary_has_63m_parameters():
    cfg = TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000, tie_embeddings="all")
    assert expected_num_parameters(cfg) == 63_082_496
    with torch.device("meta"):  # shapes only: no 250 MB of weights to initialise
        model = Transformer(cfg)
    assert model.num_parameters() == 63_082_496


def test_forward_shapes_and_scaled_embeddings(tiny_config):
    cfg = tiny_config(positional="none", src_vocab_size=11, tgt_vocab_size=17, tie_embeddings="none")
    model = Transformer(cfg).eval()
    src, tgt = random_tokens((4, 9), 11), random_tokens((4, 5), 17)
    assert model(src, tgt).shape == (4, 5, 17)
    # Embeddings are multiplied by sqrt(d_model) (paper 3.4); padding embeds to zero.
    torch.testing.assert_close(model.src_embed(src), model.src_embed.token(src) * 4.0)
    assert model.src_embed(torch.tensor([[PAD]])).abs().sum() == 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"d_model": 30, "n_heads": 4}, "not divisible"),
        ({"positional": "bogus"}, "model.positional='bogus'"),
        ({"tie_embeddings": "all", "src_vocab_size": 5}, "shared vocabulary"),
        ({"d_model": 12, "n_heads": 4, "positional": "rope"}, "even head width"),
        ({"dropout": 1.0}, "model.dropout"),
    ],
)
def test_impossible_configs_are_rejected_naming_the_key(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)
