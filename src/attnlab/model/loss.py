"""Label-smoothed cross-entropy (Szegedy et al. 2016; the paper's eps_ls = 0.1), fused.

With p = softmax(z) over V classes and target y:
    loss = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v)
         = lse(z) - (1 - eps) * z_y - eps * mean(z),          lse = log sum exp z
    d loss / d z = p - (1 - eps) * onehot(y) - eps / V
so neither log p (a V-wide tensor per token) nor the gradients of a log-softmax, a gather
and a mean need to be materialised: the forward keeps exp(z - max z) for the backward,
from which the backward forms p. On the output layer of a small transformer each V-wide
pass is a large tensor, so every one saved shows in a CPU training step (docs/performance.md).
"""

from __future__ import annotations

import torch


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, real: torch.Tensor, epsilon: float):
        # logits (N, V) fp32; target (N,); real (N,) bool: tokens that count (not padding)
        top = logits.amax(dim=-1)  # (amax: max also computes indices, slower on CPU)
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


# -- the output layer and the loss in one pass ------------------------------------------------
# The logits of a batch (tokens x V floats, the largest tensor of a step) exist only to be reduced to a
# loss and turned into their gradient p - target. Computing them a slice of tokens at a time,
# and forming that slice's gradient at once, keeps each slice in cache and never holds the
# whole (tokens x V) tensor; the slice's gradient goes straight into the two gradient GEMMs
# (d states = G W, d W += G^T states). The forward pass thus does the backward pass's work
# (the loss is a sum, so its gradient is known up to the scalar the backward multiplies in),
# and padding tokens are left out before the GEMMs: they cost nothing.

ROWS_PER_SLICE_ELEMENTS = 4 * 2**20  # a slice's logits: about 16 MB fp32 (512 tokens at V = 8,000)


class _GeneratorLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states, weight, target, epsilon: float, with_grad: bool):
        # states (N, d) of real tokens only; weight (V, d) the Linear layer; target (N,)
        N, V = states.size(0), weight.size(0)
        rows = max(1, ROWS_PER_SLICE_ELEMENTS // V)
        # sum_v z_v = states . sum_v W_v: the smoothing term's mean needs no pass over the logits
        mean_logit = states @ weight.mean(dim=0)  # (N,)
        loss = states.new_zeros((), dtype=torch.float32)
        nll_sum = loss.clone()
        correct = torch.zeros((), dtype=torch.long, device=states.device)
        grad_states = torch.empty_like(states) if with_grad else None
        grad_weight = torch.zeros_like(weight) if with_grad else None
        logits = states.new_empty(min(rows, N), V)
        for s in range(0, N, rows):
            h, y = states[s : s + rows], target[s : s + rows]
            z = logits[: h.size(0)]
            torch.mm(h, weight.t(), out=z)
            top = z.amax(dim=-1)
            target_logit = z.gather(1, y[:, None])[:, 0]
            total = z.sub_(top[:, None]).exp_().sum(dim=-1)  # z now holds exp(z - max)
            lse = top + total.log()
            nll = lse - target_logit
            loss += ((1 - epsilon) * nll + epsilon * (lse - mean_logit[s : s + rows])).sum()
            nll_sum += nll.sum()
            correct += (target_logit >= top).sum()  # the target is an argmax (ties count)
            if with_grad:  # d loss / d z = p - (1 - eps) onehot(y) - eps / V, written over z
                z.mul_(total.reciprocal_()[:, None]).sub_(epsilon / V)
                z.scatter_add_(1, y[:, None], z.new_full((h.size(0), 1), -(1 - epsilon)))
                torch.mm(z, weight, out=grad_states[s : s + rows])
                grad_weight.addmm_(z.t(), h)
        ctx.save_for_backward(grad_states, grad_weight)
        ctx.mark_non_differentiable(nll_sum, correct)
        return loss, nll_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll, _grad_correct):
        grad_states, grad_weight = ctx.saved_tensors  # reached only when the forward formed them
        return grad_states * grad_loss, grad_weight * grad_loss, None, None, None


def generator_loss(states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, epsilon: float, pad_id: int):
    """The Linear layer over decoder states and `label_smoothed_nll` of its logits, fused.

    states (..., d), weight (V, d) (a bias-free output layer), target (...) -> the same
    (loss, nll, correct, n_tokens) as `label_smoothed_nll(states @ weight.T, ...)`. On CPU
    in fp32; elsewhere (GPU, autocast) it computes exactly that.
    """
    if states.device.type != "cpu" or states.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return label_smoothed_nll(states @ weight.t(), target, epsilon, pad_id)
    flat_target = target.reshape(-1)
    real = flat_target != pad_id
    states = states.reshape(-1, states.size(-1))
    n = real.sum()
    if int(n) != real.numel():  # padding leaves before the GEMMs (its gradient stays zero)
        keep = real.nonzero()[:, 0]
        states, flat_target = states.index_select(0, keep), flat_target.index_select(0, keep)
    with_grad = torch.is_grad_enabled() and (states.requires_grad or weight.requires_grad)
    loss, nll, correct = _GeneratorLoss.apply(states, weight, flat_target, epsilon, with_grad)
    return loss, nll, correct, n
