"""The training step's own kernels against their textbook forms: the fused label-smoothed
loss (values and gradients), the cheaper dropout mask (rate, scale, backward), and the
allocator setting the command-line tools apply."""

from __future__ import annotations

import pytest
import torch

from attnlab.loss import label_smoothed_nll
from attnlab.model.dropout import Dropout, keep_mask

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


def test_dropout_mask_rate_and_scale():
    keep, scale = keep_mask(torch.Size([2001, 1000]), 0.1, torch.device("cpu"))
    dropped = 1 - keep.float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # 2e6 lanes: the standard error is 2e-4
    assert scale == pytest.approx(1 / (1 - 6554 / 65536))
    lanes = keep.view(-1, 3)  # every 16-bit lane of a 64-bit draw is used: none is always kept
    assert all(abs(1 - lanes[:, i].float().mean().item() - 0.1) < 0.004 for i in range(3))


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


def test_allocator_setting_runs_in_a_fresh_process():
    import subprocess
    import sys

    code = "from attnlab.runtime import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out in (["True", "True"], ["False", "False"])  # applied once (glibc) or not at all
    env = {**__import__("os").environ, "ATTNLAB_MALLOC": "default"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]
