"""Per-seed losses on stacked outputs (N, S, K): each seed's value and, bitwise on the CPU, its gradient as
its single run computes them.  ``Stack`` hands them to a method's ``observe`` as its loss hooks."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def seed_cross_entropy(logits, labels):
    """Each seed's ``F.cross_entropy`` (mean over its N samples): logits (N, S, K), labels (N, S) -> (S,).

    Row-wise log-softmax, then sum / N: the gradient is the single run's bitwise
    (-(g / N) at the label), the value can differ from it in the last bit."""
    n = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(n, -1).sum(0) / n


class SeedMSE(torch.autograd.Function):
    """Each seed's ``F.mse_loss`` (mean over its N x K entries): x, y (N, S, K) -> (S,).

    The backward is ATen's ``mse_loss_backward``, (2 / numel) * (x - y) * grad, per seed, so the
    gradient is the single run's bitwise (autograd of a hand-written mean would round differently)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        # Each seed's N x K squared errors contiguous, as the single run reduces them.
        return (x - y).square().transpose(0, 1).reshape(x.shape[1], -1).mean(1)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        norm = 2.0 / (x.shape[0] * x.shape[2])
        return norm * (x - y) * grad.view(1, -1, 1), None


def seed_mse(x, y):
    if torch.is_autocast_enabled(x.device.type):
        return (x.float() - y).square().mean(dim=(0, 2))
    return SeedMSE.apply(x, y)
