"""The arms of the paper's long-tail comparison (``--method``): a head and the training loss of one batch.

An arm is one class registered here; everything else - data, schedule,
evaluation, many/medium/few metrics - is the trainer's, so the arms differ in
exactly what the comparison is about.  Heads come from the core's registry
(``backbone.heads``: ``fc``, and ``fno`` without its scale, as the authors'
long-tail FNO); the ETF arms batch-normalise the features before the core's
``simplex_etf`` prototypes, which no continual head does, so that head lives here.
"""
from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backbone.heads import FixedHead, make_head, simplex_etf
from longtail.losses import (arc_mixup_batch, arc_mixup_loss, class_balancing_scale, dot_regression_loss,
                             draw_lambda, mixup_batch, mixup_cross_entropy)
from utils.registry import registrar
from utils.seeding import derive_seed, make_generator

LT_METHODS: dict = {}
register_lt_method = registrar(LT_METHODS, "long-tail method")


def lt_method_names() -> list:
    return sorted(LT_METHODS)


class BatchNormETFHead(FixedHead):
    """The fixed simplex-ETF classifier as the long-tail authors (and Yang et al.) run it.

    z = BatchNorm(h), no L2 normalisation, no scale; logits = z M^T with the
    unscaled prototypes M (the per-batch class-balancing lengths belong to the
    training loss).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight, scale=False)
        self.bn = nn.BatchNorm1d(weight.shape[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(self.bn(h.float()))

    def train_features(self, h: torch.Tensor) -> torch.Tensor:
        """z as ``forward`` computed it in train mode (this batch's statistics, same affine parameters).

        The loss needs z itself, which the logits do not determine; recomputing
        it here leaves the running statistics updated once, by ``forward``.
        """
        return F.batch_norm(h.float(), None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)


class LongTailMethod:
    """An arm: ``make_head`` and the training ``loss`` of one batch.

    ``HEAD`` names a head of the core's registry and ``HEAD_FLAGS`` fixes its
    own flags; its random draws come from the ``HEAD_STREAM`` stream of the
    run's seed.  ``CLEAN_BN_PASS``: after the loss's forward, one no-grad
    forward of the clean batch in train mode, so that batch-norm running
    statistics see clean and mixed batches about equally (the authors' mixup
    and arc-mixup trainers).  Mixing draws come from this process's own
    streams (``mixing/rank<r>``), so they are reproducible and do not disturb
    data order or augmentation; ``generators`` names them for checkpoints.
    """

    HEAD = "fc"
    HEAD_FLAGS: dict = {}
    HEAD_STREAM = "fno-partition"  # the continual trainer's stream for its heads' draws
    CLEAN_BN_PASS = False

    def __init__(self, args, dataset_cls: type, device: torch.device, rank: int = 0):
        self.args = args
        self.dataset_cls = dataset_cls
        self.num_classes = dataset_cls.NUM_CLASSES
        self.generator = make_generator(args.seed, f"mixing/rank{rank}", device)
        self.lambda_rng = np.random.default_rng(derive_seed(args.seed, f"mixing-lambda/rank{rank}"))

    def generators(self) -> dict:
        return {"mixing": self.generator, "mixing_lambda": self.lambda_rng}

    def make_head(self, feature_dim: int) -> nn.Module:
        return make_head(self.HEAD, feature_dim, self.num_classes, make_generator(self.args.seed, self.HEAD_STREAM),
                         types.SimpleNamespace(**self.HEAD_FLAGS))

    def loss(self, net: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``net`` is the (possibly DDP-wrapped) network to call, ``head`` its head module."""
        raise NotImplementedError


@register_lt_method("ce")
class CrossEntropy(LongTailMethod):
    """Learnable FC head, plain cross-entropy."""

    def loss(self, net, head, x, y):
        return F.cross_entropy(net(x).float(), y)


@register_lt_method("mixup")
class Mixup(LongTailMethod):
    """Learnable FC head, standard mixup: lambda ~ Beta(alpha, alpha) per batch, random partner."""

    CLEAN_BN_PASS = True

    def loss(self, net, head, x, y):
        lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
        x_mix, y_partner = mixup_batch(x, y, lam, self.generator)
        return mixup_cross_entropy(net(x_mix), y, y_partner, lam)


@register_lt_method("etf-dr")
class ETFDotRegression(LongTailMethod):
    """The paper's "mixup + ETF + DR" row (the authors' ``etf_m`` trainer).

    Input mixup (lambda ~ Beta(alpha, alpha), random partner); features
    batch-normalised (no L2 normalisation); each prototype scaled by the
    batch's class-balancing length sqrt((B / C) / n_c), counted on the
    un-mixed labels; loss lambda DR(y) + (1 - lambda) DR(y_partner).  No clean
    batch-norm pass: the authors' ``etf_m`` has none.
    """

    MIX = True

    def make_head(self, feature_dim):
        return BatchNormETFHead(simplex_etf(self.num_classes, feature_dim, make_generator(self.args.seed, "etf")))

    def loss(self, net, head, x, y):
        if self.MIX:
            lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
            x, y_partner = mixup_batch(x, y, lam, self.generator)
        _, h = net(x, return_features=True)
        z = head.train_features(h)
        prototypes = class_balancing_scale(y, self.num_classes).unsqueeze(1) * head.weight
        penalty = self.dataset_cls.DR_NORM_PENALTY
        loss = dot_regression_loss(z, prototypes, y, penalty)
        if self.MIX:
            loss = lam * loss + (1 - lam) * dot_regression_loss(z, prototypes, y_partner, penalty)
        return loss


@register_lt_method("etf-dr-plain")
class ETFDotRegressionPlain(ETFDotRegression):
    """Yang et al.'s un-mixed arm (the authors' ``etf`` trainer): ``etf-dr`` without mixup."""

    MIX = False


@register_lt_method("arc-mixup")
class ArcMixup(LongTailMethod):
    """Fixed FNO head (no scale) with arc-mixup and the -log(q_hat . h_hat) loss (the authors' ``mask`` trainer)."""

    HEAD = "fno"
    HEAD_FLAGS = {"fno_scale": 0}  # the authors' long-tail FNO has no learnable scale
    CLEAN_BN_PASS = True

    def loss(self, net, head, x, y):
        lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
        batch = arc_mixup_batch(x, y, head.weight, lam, self.generator)
        _, h = net(batch.x, return_features=True)
        return arc_mixup_loss(h, batch.q, batch.feature_mask)
