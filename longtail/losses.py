"""Losses and mixing rules of the long-tailed arms: arc-mixup, standard mixup, ETF dot regression.

Each follows the authors' released code (khyong/FNO-classifier, ``fno_lt``);
docs/long_tail.md lists the file each rule comes from.

Every random draw takes an explicit generator (device tensors) or a NumPy
``Generator`` (the per-batch mixing coefficient, a host scalar), so a run's
draws are reproducible and independent of the data order and augmentation.
Nothing here reads a tensor back to the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


# Added inside the log of the arc-mixup loss, as the authors do: a feature with no mass on the pair's
# dimensions gives a large finite loss, and (unlike a clamp) the gradient never vanishes.
ARC_LOSS_EPS = 1e-18
# The dot-regression loss divides by the detached feature norm, floored as the authors floor it.
DR_NORM_FLOOR = 1e-8


def uniform_choice(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each row of the boolean matrix ``allowed`` (n x m), a column index drawn uniformly among
    the allowed ones (random keys + argmax: no loop, no host sync).  Rows with nothing allowed give 0."""
    keys = torch.rand(allowed.shape, device=allowed.device, generator=generator)
    return keys.masked_fill(~allowed, -1.0).argmax(1)


def balanced_pairs(labels: torch.Tensor, num_classes: int, generator: torch.Generator):
    """Class-balanced in-batch pairs ``(i, j)`` with ``j`` always from another class.

    For each of the ``n`` pairs, the class of ``i`` is drawn uniformly among the
    classes present in the batch and ``i`` uniformly among that class's samples;
    the class of ``j`` is drawn uniformly among the *other* present classes and
    ``j`` uniformly within it.  A pair therefore does not favour the head
    classes that dominate a long-tailed batch.  Returns ``(i, j, present)``
    where ``present`` (K booleans) marks the classes in the batch; when fewer
    than two classes are present ``j`` is meaningless (see ``arc_mixup_batch``).
    """
    n = len(labels)
    classes = torch.arange(num_classes, device=labels.device)
    # index_fill_ rather than bincount: CUDA's bincount reads the largest label back to the host
    present = torch.zeros(num_classes, dtype=torch.bool, device=labels.device).index_fill_(0, labels, True)
    class_i = uniform_choice(present.expand(n, num_classes), generator)
    class_j = uniform_choice(present & (classes != class_i.unsqueeze(1)), generator)
    i = uniform_choice(labels.unsqueeze(0) == class_i.unsqueeze(1), generator)
    j = uniform_choice(labels.unsqueeze(0) == class_j.unsqueeze(1), generator)
    return i, j, present


def arc_coefficients(lam: float):
    """theta = pi * lambda / 2, a = sin(theta), b = cos(theta): a^2 + b^2 = 1."""
    theta = math.pi * lam / 2
    return math.sin(theta), math.cos(theta)


@dataclass
class ArcMixupBatch:
    x: torch.Tensor             # a x_i + b x_j
    q: torch.Tensor             # a q_{y_i} + b q_{y_j}, unit norm (rows of Q are orthonormal)
    feature_mask: torch.Tensor  # (D,) 1 on the dimensions of classes present in the batch, else 0


def arc_mixup_batch(x: torch.Tensor, labels: torch.Tensor, q: torch.Tensor, lam: float,
                    generator: torch.Generator) -> ArcMixupBatch:
    """Arc-mixup of one batch with the FNO matrix ``q`` (K x D).

    Pairs come from ``balanced_pairs``.  A batch holding a single class has no
    partner from another class: it is then not mixed (a = 1, b = 0, j = i),
    decided on the device without a host sync.
    """
    num_classes = q.shape[0]
    i, j, present = balanced_pairs(labels, num_classes, generator)
    a, b = arc_coefficients(lam)
    mixable = present.sum() >= 2
    j = torch.where(mixable, j, i)
    a_t = torch.where(mixable, a, 1.0).to(x.dtype)
    b_t = torch.where(mixable, b, 0.0).to(x.dtype)
    x_hat = a_t * x[i] + b_t * x[j]
    q_hat = a_t.to(q.dtype) * q[labels[i]] + b_t.to(q.dtype) * q[labels[j]]
    # Q is non-negative with disjoint row supports: a dimension belongs to a present class iff this is > 0.
    feature_mask = (present.to(q.dtype) @ q > 0).to(q.dtype)
    return ArcMixupBatch(x_hat, q_hat, feature_mask)


def arc_mixup_loss(h: torch.Tensor, q_hat: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """-mean(log(q_hat . h_hat + 1e-18)), h_hat = the L2-normalised feature with absent classes' dimensions zeroed.

    ``h`` (n x D) are post-ReLU features, so q_hat . h_hat lies in [0, 1].
    """
    h_hat = F.normalize(h.float() * feature_mask, dim=1)
    dot = (q_hat.float() * h_hat).sum(1)
    return -(dot + ARC_LOSS_EPS).log().mean()


def mixup_batch(x: torch.Tensor, labels: torch.Tensor, lam: float, generator: torch.Generator):
    """Standard mixup (Zhang et al., 2018): x_hat = lam x + (1 - lam) x[perm] with a random partner."""
    perm = torch.randperm(len(labels), device=labels.device, generator=generator)
    return lam * x + (1 - lam) * x[perm], labels[perm]


def mixup_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor,
                        lam: float) -> torch.Tensor:
    logits = logits.float()
    return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, partner_labels)


def draw_lambda(rng: np.random.Generator, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), once per batch (a host scalar: no device sync)."""
    return float(rng.beta(alpha, alpha))


def class_balancing_scale(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class prototype lengths E_W (K,): sqrt((B / C) / n_c) for each class c in the batch, 1 otherwise.

    B is the batch size, C the number of distinct classes in it and n_c the
    count of class c (the authors' ``produce_Ew``): rare classes of the batch
    get longer prototypes.  Computed on the device, without a host sync.
    """
    counts = torch.zeros(num_classes, device=labels.device).index_add_(
        0, labels, torch.ones(len(labels), device=labels.device))
    present = counts > 0
    per_class = len(labels) / present.sum()
    return torch.where(present, (per_class / counts.clamp(min=1)).sqrt(), torch.ones_like(counts))


def dot_regression_loss(z: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                        norm_penalty: float = 0.0) -> torch.Tensor:
    """Dot regression (Yang et al., NeurIPS 2022, as the authors' ``reg_dot_loss``).

    ``z`` (n x D) are the batch-normalised features, ``prototypes`` (K x D) the
    scaled ETF rows.  With m = prototypes[y]:
    0.5 * mean((z . m - |m| |z|)^2 / |z|), |z| detached (it only weights the
    regression); only the own class's prototype is pulled, no other class is
    pushed.  ``norm_penalty`` > 0 adds norm_penalty * mean(|z|), as the
    authors do outside CIFAR.
    """
    z = z.float()
    m = prototypes.float()[labels]
    dot = (z * m).sum(1)
    z_len = z.detach().norm(dim=1).clamp(min=DR_NORM_FLOOR)
    loss = 0.5 * ((dot - m.norm(dim=1) * z_len).pow(2) / z_len).mean()
    if norm_penalty > 0:
        loss = loss + norm_penalty * z.norm(dim=1).mean()
    return loss
