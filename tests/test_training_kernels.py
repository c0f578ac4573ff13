"""The training step's own kernels against their textbook forms: the fused label-smoothed
loss (values and gradients), the cheaper dropout mask (rate, scale, backward), and the
allocator setting the command-line tools apply."""

from __future__ import annotations

import pytest
import torch

import attnlab.model.loss as loss_module
from attnlab.model import Transformer, TransformerConfig
from attnlab.model.dropout import Dropout, keep_mask
from attnlab.model.loss import generator_loss, label_smoothed_nll

PAD = 0


def reference_loss(logits, target, epsilon, pad_id):
    """The loss written out: log softmax, gather, mean over the vocabulary."""
    logp = logits.log_softmax(dim=-1)
    real = target != pad_id
    nll = -logp.gather(-1, target[..., None])[..., 0]
    smooth = -logp.mean(dim=-1)
    loss = ((1 - epsilon) * nll + epsilon * smooth)[real].sum()
    correct = (logp.argmax(-1) == target)[real].sum()
    return loss, nll[real].sum(), correct, real.sum()


def batch(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(4, 6, 50, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(1, 50, (4, 6), generator=g)
    target[1, 3:] = PAD  # right padding, as the batches have
    target[2, 0] = logits[2, 0].argmax()  # at least one correct argmax
    return logits, target


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_fused_loss_equals_log_softmax_form_in_value_and_gradient(epsilon):
    logits, target = batch(torch.float64)
    ours = label_smoothed_nll(logits, target, epsilon, PAD)
    theirs = reference_loss(logits, target, epsilon, PAD)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-10, rtol=0)
    assert int(ours[2]) >= 1 and int(ours[3]) == int((target != PAD).sum())
    (grad,) = torch.autograd.grad(1.7 * ours[0], logits)
    (expected,) = torch.autograd.grad(1.7 * theirs[0], logits)
    torch.testing.assert_close(grad, expected, atol=1e-10, rtol=0)
    assert grad[1, 3:].abs().max() == 0  # padding gets no gradient


def test_fused_loss_in_float32_and_through_gradcheck():
    logits, target = batch(torch.float32)
    ours, theirs = label_smoothed_nll(logits, target, 0.1, PAD)[0], reference_loss(logits, target, 0.1, PAD)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-6)
    small, small_target = batch(torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda z: label_smoothed_nll(z, small_target, 0.1, PAD)[0], (small,))


def test_fused_loss_matches_torch_cross_entropy_with_label_smoothing():
    logits, target = batch(torch.float64)
    ours = label_smoothed_nll(logits, target, 0.1, PAD)[0]
    theirs = torch.nn.functional.cross_entropy(
        logits.view(-1, 50), target.view(-1), ignore_index=PAD, label_smoothing=0.1, reduction="sum"
    )
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


def states_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(5, 9, 16, generator=g, requires_grad=True)
    weight = (0.5 * torch.randn(40, 16, generator=g)).requires_grad_()
    target = torch.randint(3, 40, (5, 9), generator=g)
    target[1, 4:] = target[3, 7:] = PAD
    target[2, 0] = (states[2, 0] @ weight.t()).argmax()
    return states, weight, target


@pytest.mark.parametrize("slice_elements", [40 * 7, 40 * 64, 2**22])  # 7 tokens a slice, 64, all at once
def test_output_layer_fused_with_the_loss_equals_logits_then_loss(monkeypatch, slice_elements):
    monkeypatch.setattr(loss_module, "ROWS_PER_SLICE_ELEMENTS", slice_elements)
    states, weight, target = states_batch()
    ours = generator_loss(states, weight, target, 0.1, PAD)
    # the reference in float64: the fused path is float32-only, so this also bounds its rounding
    theirs = reference_loss(states.double() @ weight.double().t(), target, 0.1, PAD)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-6)
    assert int(ours[2]) >= 1 and int(ours[3]) == 45 - 5 - 2
    grads = torch.autograd.grad(0.3 * ours[0], (states, weight))
    expected = torch.autograd.grad(0.3 * theirs[0], (states, weight))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)
    assert grads[0][1, 4:].abs().max() == 0 and grads[0][3, 7:].abs().max() == 0  # padding: no gradient


def test_fused_output_loss_without_gradients_and_on_all_padding():
    states, weight, target = states_batch()
    with torch.no_grad():
        ours = generator_loss(states, weight, target, 0.1, PAD)
    theirs = label_smoothed_nll(states @ weight.t(), target, 0.1, PAD)
    torch.testing.assert_close(ours[0], theirs[0].detach(), atol=1e-4, rtol=1e-6)
    assert not ours[0].requires_grad
    loss, nll, correct, n = generator_loss(states, weight, torch.zeros_like(target), 0.1, PAD)
    assert float(loss.detach()) == float(nll) == 0 and int(correct) == int(n) == 0
    loss.backward()
    assert states.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_model_loss_equals_the_loss_of_its_logits_for_every_parameter():
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=32, n_heads=4, d_ff=64,
                            encoder_layers=2, decoder_layers=2, dropout=0.0)  # fmt: skip
    model = Transformer(cfg)
    src, tgt = torch.randint(4, 30, (6, 7)), torch.randint(4, 30, (6, 8))
    src[2, 5:] = tgt[4, 6:] = PAD
    tgt_in = torch.cat([torch.full((6, 1), cfg.bos_id), tgt[:, :-1]], dim=1)
    ours = model.loss(src, tgt_in, tgt, 0.1)
    ours[0].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    theirs = label_smoothed_nll(model(src, tgt_in), tgt, 0.1, PAD)
    theirs[0].backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dropout_mask_rate_and_scale():
    mask = keep_mask(torch.Size([2001, 1000]), 0.1, torch.device("cpu"))
    scale = 1 / (1 - 6554 / 65536)
    assert mask.shape == (2001, 1000) and mask.dtype == torch.float32
    assert mask.unique().tolist() == [0.0, pytest.approx(scale)]
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 2e6 lanes: the standard error is 2e-4
    lanes = mask.view(-1)[:2_000_000].view(-1, 4)  # every 16-bit lane of a 64-bit draw is uniform
    assert all(abs((lanes[:, i] == 0).float().mean().item() - 0.1) < 0.004 for i in range(4))


def test_dropout_is_unbiased_identity_in_eval_and_its_gradient_follows_the_mask():
    layer = Dropout(0.25)
    x = torch.randn(300, 400, requires_grad=True)
    layer.eval()
    assert layer(x) is x
    layer.train()
    torch.manual_seed(0)
    y = layer(x)
    zeros = y == 0
    assert abs(zeros.float().mean().item() - 0.25) < 0.01
    ratio = y[~zeros] / x[~zeros]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 65536 / (65536 - 16384)))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad == 0, zeros)
    assert abs(Dropout(0.1).train()(torch.ones(1000, 1000)).mean().item() - 1) < 0.005  # E[dropout(x)] = x
    torch.manual_seed(0)
    again = layer(x)
    assert torch.equal(again, y)  # reproducible under the run's seed
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_residual_dropout_is_one_multiply_add_with_the_masks_gradient():
    layer = Dropout(0.3).train()
    skip = torch.randn(7, 5, 16, requires_grad=True)
    y = torch.randn(7, 5, 16, requires_grad=True)
    torch.manual_seed(3)
    out = layer.add_to(skip, y)
    torch.manual_seed(3)
    mask = keep_mask(y.shape, 0.3, y.device)
    assert 0 < int((mask == 0).sum()) < mask.numel()
    torch.testing.assert_close(out, skip + y * mask)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(skip.grad, grad)
    torch.testing.assert_close(y.grad, grad * mask)
    torch.manual_seed(3)
    torch.testing.assert_close(layer.add_to(None, y), y * mask)  # residual off: Dropout(y) alone
    layer.eval()
    torch.testing.assert_close(layer.add_to(skip, y), skip + y)


def test_allocator_setting_runs_in_a_fresh_process():
    import subprocess
    import sys

    code = "from attnlab.runtime import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out in (["True", "True"], ["False", "False"])  # applied once (glibc) or not at all
    env = {**__import__("os").environ, "ATTNLAB_MALLOC": "default"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]
