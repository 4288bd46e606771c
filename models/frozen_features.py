"""The base of methods that classify a frozen pretrained network's features with a classifier fitted in
closed form at the end of each task (SimpleCIL, RanPAC): no stream steps, features through the cache.

The backbone is frozen from the start, unless ``--first_session_adapt 1``
(APER, and phase 1 of RanPAC): then an SSF module (``backbone/ssf.py``) and the
head are trained on the first task's stream with cross-entropy (SGD at
``--adapt_lr``, momentum 0.9, weight decay 5e-4, cosine-annealed to 0 over
``--n_epochs``, as RanPAC's code), and frozen from its end on;
the cache is emptied then.  ``end_task`` sees the task's training
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
from backbone.ssf import SSF
from models.sgd import Sgd
from utils.cli import Flag, binary, positive

UNSEEN = -1e9  # the logit of a class not seen yet: below any score
ADAPT_WEIGHT_DECAY = 5e-4  # first-session adaptation, as RanPAC's code (args/*_publish.csv)


class FrozenFeatureModel(Sgd):  # its stream steps are fine-tuning steps (Sgd.observe)
    USES_LR = False
    NEEDS_BOUNDARIES = True  # fits its classifier (prototypes, ridge statistics) at each task's end
    FEATURE_BATCH = 128  # images per forward pass when a task's features are computed
    FLAGS = {"feature_cache": Flag(binary, 1, "1: compute each image's frozen feature once and keep it on the "
                                              "device; 0: recompute it at every use (same results)",
                                   metavar="{0,1}"),
             "first_session_adapt": Flag(binary, 0, "1: train an SSF module (and the head) on the first task, then "
                                                    "freeze it (APER; RanPAC's phase 1); needs a ViT backbone",
                                         metavar="{0,1}"),
             "adapt_lr": Flag(positive(float), 0.01, "SGD learning rate of the first-session adaptation")}

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.cache = FeatureCache(self.backbone) if args.feature_cache else None
        self.ssf = None
        if args.first_session_adapt:
            self.ssf = SSF(getattr(self.backbone, "net", self.backbone))
            self.ssf.to(setting.device)
            self.ssf.attach()
        self.register_buffer("seen", torch.zeros(len(setting.task_of_class), dtype=torch.bool,
                                                 device=setting.device))

    @property
    def backbone(self):
        return getattr(self.net, "_orig_mod", self.net).backbone

    @property
    def head(self):
        return getattr(self.net, "_orig_mod", self.net).head

    def trains_on(self, task: int) -> bool:
        return self.ssf is not None and task == 0

    def build_optimizer(self):
        if not self.trains_on(self.current_task):
            return None  # nothing is trained by gradient steps
        params = list(self.ssf.parameters()) + [p for p in self.head.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.args.adapt_lr, momentum=0.9, weight_decay=ADAPT_WEIGHT_DECAY)

    def build_scheduler(self, opt):
        return None if opt is None else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.args.n_epochs)

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
        if self.trains_on(task):  # adapted: freeze, and forget the features of the network before adaptation
            self.ssf.requires_grad_(False)
            if self.cache is not None:
                self.cache.clear()
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
