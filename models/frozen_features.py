"""The base of methods that classify a frozen pretrained network's features with a classifier fitted in
closed form at the end of each task (SimpleCIL, RanPAC): no stream steps, features through the cache.

The backbone is frozen from the start; ``end_task`` sees the task's training
images without augmentation (``data.prepare``, the test transform, as PILOT's
prototype loaders) and calls ``fit(task, features, labels)``; ``forward``
scores the features with ``scores`` and gives classes not seen yet the lowest
logit (their classifier does not exist yet: PILOT's classifiers grow a block of
classes per task).  With ``--feature_cache 1`` (default) every image's feature
is computed once (``backbone/feature_cache.py``).
"""
from __future__ import annotations

import torch

from backbone.feature_cache import FeatureCache
from models.continual_model import ContinualModel
from utils.cli import Flag, binary

UNSEEN = -1e9  # the logit of a class not seen yet: below any score


class FrozenFeatureModel(ContinualModel):
    USES_LR = False
    FEATURE_BATCH = 128  # images per forward pass when a task's features are computed
    FLAGS = {"feature_cache": Flag(binary, 1, "1: compute each image's frozen feature once and keep it on the "
                                              "device; 0: recompute it at every use (same results)",
                                   metavar="{0,1}")}

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.cache = FeatureCache(self.backbone) if args.feature_cache else None
        self.register_buffer("seen", torch.zeros(len(setting.task_of_class), dtype=torch.bool,
                                                 device=setting.device))

    @property
    def backbone(self):
        return getattr(self.net, "_orig_mod", self.net).backbone

    @property
    def head(self):
        return getattr(self.net, "_orig_mod", self.net).head

    def trains_on(self, task: int) -> bool:
        return False

    def build_optimizer(self):
        return None  # nothing is trained by gradient steps

    def build_scheduler(self, opt):
        return None

    def observe(self, inputs, labels, not_aug_inputs):
        raise RuntimeError(f"{type(self).__name__} takes no stream steps (trains_on is False)")

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen features of network inputs ``x`` (batch x D, float32)."""
        self.backbone.eval()
        with self.autocast():
            return (self.cache(x) if self.cache is not None else self.backbone(x)).float()

    def task_features(self, data) -> tuple:
        """(features, labels) of the task's training images, without augmentation."""
        feats = [self.features(data.prepare(x)) for x, _ in data.batches(self.FEATURE_BATCH)]
        return torch.cat(feats), data.y

    def end_task(self, task, data):
        feats, labels = self.task_features(data)
        self.seen[labels] = True
        self.fit(task, feats, labels)

    def fit(self, task: int, feats: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        logits = self.scores(self.features(x))
        return logits.masked_fill(~self.seen, UNSEEN)
