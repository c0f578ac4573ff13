"""Label-smoothed cross-entropy (Szegedy et al. 2016; the paper's eps_ls = 0.1), fused.

With p = softmax(z) over V classes and target y:
    loss = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v)
         = lse(z) - (1 - eps) * z_y - eps * mean(z),          lse = log sum exp z
    d loss / d z = p - (1 - eps) * onehot(y) - eps / V
so neither log p (a V-wide tensor per token) nor the gradients of a log-softmax, a gather
and a mean need to be materialised: the forward keeps exp(z - max z) for the backward,
from which the backward forms p. On the output layer of a small transformer these V-wide
passes are a tenth of a CPU training step (docs/performance.md).
"""

from __future__ import annotations

import torch


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, real: torch.Tensor, epsilon: float):
        # logits (N, V) fp32; target (N,); real (N,) bool: tokens that count (not padding)
        top = logits.amax(dim=-1)  # (amax: max with indices costs several times more on CPU)
        exp = torch.sub(logits, top[:, None]).exp_()  # (N, V), kept for the backward
        total = exp.sum(dim=-1)
        lse = top + total.log()
        target_logit = logits.gather(1, target[:, None])[:, 0]
        nll = lse - target_logit
        smooth = lse - logits.mean(dim=-1)
        loss = torch.where(real, (1 - epsilon) * nll + epsilon * smooth, 0.0).sum()
        nll_sum = torch.where(real, nll, 0.0).sum()
        correct = ((target_logit >= top) & real).sum()  # the target is an argmax (ties count)
        ctx.save_for_backward(exp, total, target, real)
        ctx.epsilon = epsilon
        ctx.mark_non_differentiable(nll_sum, correct)
        return loss, nll_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll, _grad_correct):
        exp, total, target, real = ctx.saved_tensors
        if exp.numel() == 0:
            return exp, None, None, None
        eps, V = ctx.epsilon, exp.size(1)
        g = torch.where(real, grad_loss, 0.0)  # (N,) weight of each token's loss
        # p * g - eps / V * g, then - (1 - eps) * g at the target (exp is left intact, so a
        # retained graph can run backward again)
        grad = torch.mul(exp, (g / total)[:, None]).sub_((g * (eps / V))[:, None])
        grad.scatter_add_(1, target[:, None], (-(1 - eps) * g)[:, None])
        return grad, None, None, None


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, epsilon: float, pad_id: int):
    """-> (loss, nll, correct, n_tokens), sums over non-pad target tokens.

    loss = (1 - eps) * NLL + eps * mean over the vocabulary of -log p (as torch's
    `cross_entropy(label_smoothing=eps)`); nll (for perplexity) and the number of argmax
    hits come from the same pass and carry no gradient. logits (..., V), target (...).
    """
    V = logits.size(-1)
    flat_target = target.reshape(-1)
    real = flat_target != pad_id
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, V)  # bf16 -> fp32
    loss, nll, correct = _LabelSmoothedCrossEntropy.apply(logits, flat_target, real, epsilon)
    return loss, nll, correct, real.sum()
