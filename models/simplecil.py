"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need", 2023): a frozen pretrained network and one prototype per class, scored by cosine.

After each task every class of the task gets the mean of its training
images' embeddings (no augmentation) as its prototype; an image is classified
by the cosine similarity of its embedding to every prototype.  Nothing is
trained.  How ``--classifier`` enters: the embedding is the backbone's feature
``h`` with ``fc`` (the paper: the FC layer's weights replaced by the
prototypes, its bias unused), and the head's fixed class scores ``W h`` with a
fixed head (``fno``, ``etf``, ``orth``): with FNO each coordinate of ``W h`` is
the (scaled) sum of one class's block of dimensions, so the prototypes live in
FNO's partition of the features.

``--first_session_adapt 1`` is APER's adaptation (an SSF module trained on the
first task, then frozen; ``models/frozen_features.py``), with prototypes of the
adapted features only: APER also concatenates the pretrained network's
features, which is not done here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import register_model
from models.frozen_features import FrozenFeatureModel


@register_model("simplecil")
class SimpleCIL(FrozenFeatureModel):
    # --load_best_args: nothing to tune (no training); the benchmarks' defaults (ViT-B/16 in21k) are the paper's.
    # seq-digits: this project's smoke row (every method has one), a frozen random MLP.
    BEST_ARGS = {name: {0: {}} for name in ("seq-cifar100-224", "seq-imagenet-r", "seq-cub200", "seq-digits")}

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        self.head_space = bool(getattr(self.head, "FIXED", False))
        dim = len(setting.task_of_class) if self.head_space else self.backbone.feature_dim
        self.register_buffer("prototypes", torch.zeros(len(setting.task_of_class), dim, device=setting.device))

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """The space of the prototypes: the features (fc), or the fixed head's class scores ``W h``."""
        return F.linear(feats, self.head.class_weights()) if self.head_space else feats

    @torch.no_grad()
    def fit(self, task, feats, labels):
        emb = self.embed(feats)
        sums = torch.zeros_like(self.prototypes).index_add_(0, labels, emb)
        counts = torch.bincount(labels, minlength=len(self.prototypes)).unsqueeze(1)
        new = counts.squeeze(1) > 0
        self.prototypes[new] = sums[new] / counts[new]
        if not self.head_space:  # as the paper, the FC layer holds the prototypes (diagnostics read it)
            self.head.weight.data.copy_(self.prototypes)
            if getattr(self.head, "bias", None) is not None:  # FC; a cosine head has none
                self.head.bias.data.zero_()

    def scores(self, feats):
        return F.normalize(self.embed(feats), dim=1) @ F.normalize(self.prototypes, dim=1).T
