"""Losses and mixing rules of the long-tailed arms: arc-mixup, standard mixup, simplex ETF + dot regression.

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

from utils.errors import UserError

# -log(q_hat . h_hat) is infinite when the feature has no mass on the dimensions of the
# pair's classes (possible with post-ReLU features); the dot product is clamped here.
ARC_LOSS_FLOOR = 1e-7


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
    """-log(q_hat . h_hat), h_hat = the L2-normalised feature with absent classes' dimensions zeroed.

    ``h`` (n x D) are post-ReLU features, so q_hat . h_hat lies in [0, 1]; it
    is clamped at ``ARC_LOSS_FLOOR`` so that a feature with no mass on the
    pair's dimensions gives a large finite loss instead of infinity.
    """
    h_hat = F.normalize(h.float() * feature_mask, dim=1)
    dot = (q_hat.float() * h_hat).sum(1)
    return -dot.clamp(min=ARC_LOSS_FLOOR).log().mean()


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


def simplex_etf(num_classes: int, feature_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A simplex equiangular tight frame, K x D (one unit-norm row per class).

    M = sqrt(K / (K - 1)) * U (I_K - 1 1^T / K) with U a random D x K matrix of
    orthonormal columns; the rows of M^T have unit norm and pairwise cosine
    -1 / (K - 1), the geometry of neural collapse (Papyan et al., 2020).
    """
    if num_classes < 2:
        raise UserError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if feature_dim < num_classes:
        raise UserError(f"the ETF head needs at least as many feature dimensions as classes; "
                         f"got feature_dim={feature_dim} < num_classes={num_classes}")
    gaussian = torch.randn(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    u, _ = torch.linalg.qr(gaussian)  # D x K, orthonormal columns
    centring = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    m = math.sqrt(num_classes / (num_classes - 1)) * u @ centring
    return m.T.contiguous().float()


def dot_regression_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The dot-regression loss of Yang et al. (NeurIPS 2022) for unit-norm features and prototypes.

    With h_hat and the fixed ETF prototypes w_k of unit norm, the logits are
    the dot products w_k . h_hat, and the loss is
    1/2 * mean_i (w_{y_i} . h_hat_i - 1)^2 (their L_DR with E_W = E_H = 1): only
    the own class's prototype is pulled, no other class is pushed away.
    """
    dot = logits.float().gather(1, labels.unsqueeze(1)).squeeze(1)
    return 0.5 * (dot - 1.0).pow(2).mean()
