"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning",
NeurIPS 2023): frozen features, a fixed random projection with ReLU, and a ridge-regression classifier.

Each feature ``h`` (D) becomes ``z = ReLU(h P)`` with ``P`` a D x M matrix of
standard normal entries drawn once (``--rp_dim`` M, 10,000 in the paper).
Over the tasks seen so far the method accumulates the Gram matrix
``G = sum z z^T`` (M x M) and ``C = sum z y^T`` (M x K, one-hot targets) and
sets the classifier to ``W = (G + lambda I)^-1 C``; logits are ``z W``.  The
ridge ``lambda`` is chosen after each task, as the authors' code
(``optimise_ridge_parameter``): among 10^-8 .. 10^8, the one whose ridge
fitted on a random 80% of the task's samples has the smallest mean squared
error on the other 20%.  Phase 1 of the paper, a parameter-efficient module
trained on the first task only, is ``--first_session_adapt 1`` (an SSF module,
one of the paper's choices; ``models/frozen_features.py``); without it this is
the paper's "RanPAC without PETL" variant.

How ``--classifier`` enters: it does not; the ridge classifier replaces the
head, so only ``--classifier fc`` (the default, unused) is accepted.
"""
from __future__ import annotations

import torch

from models import register_model
from models.frozen_features import FrozenFeatureModel
from utils.cli import Flag, positive
from utils.seeding import make_generator

RIDGES = [10.0 ** e for e in range(-8, 9)]  # the authors' grid: 10.0 ** np.arange(-8, 9) (RanPAC.py)
FIT_SHARE = 0.8


def ridge_solve(gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(G + ridge I)^-1 C``."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, targets)


def choose_ridge(z: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
    """The ridge of ``RIDGES`` with the lowest held-out mean squared error: fitted on a random ``FIT_SHARE`` of
    the rows of ``z`` (targets ``y``), scored on the rest.  One eigendecomposition serves every ridge."""
    order = torch.randperm(len(z), device=z.device, generator=generator)
    n_fit = max(1, int(FIT_SHARE * len(z)))
    fit, held = order[:n_fit], order[n_fit:]
    if not len(held):
        return 1.0
    values, vectors = torch.linalg.eigh(z[fit].T @ z[fit])
    projected = vectors.T @ (z[fit].T @ y[fit])          # V^T C
    errors = [((z[held] @ (vectors @ (projected / (values + r).unsqueeze(1))) - y[held]) ** 2).mean()
              for r in RIDGES]
    return RIDGES[int(torch.stack(errors).argmin())]


@register_model("ranpac")
class RanPAC(FrozenFeatureModel):
    FLAGS = {**FrozenFeatureModel.FLAGS,
             "rp_dim": Flag(positive(int), 10000, "M: the random projection's output dimension (the paper: 10000)")}
    # --load_best_args: the authors' args/{cifar224,imagenetr,cub}_publish.csv (RanPAC/RanPAC), row "Algorithm 1":
    # M = 10000; phase 1 on the first task for 20 epochs, batch 48, SGD lr 0.01 (cosine to 0, momentum 0.9,
    # weight decay 5e-4); ViT-B/16 in21k on CIFAR-100, the ImageNet-1k fine-tuned ViT-B/16 on ImageNet-R and CUB.
    # Their phase-1 module is SSF on ImageNet-R and an AdaptFormer adapter on CIFAR-100 and CUB: SSF here for all.
    # seq-digits: this project's smoke row (every method has one; a frozen random MLP of 100 features), M = 1000.
    BEST_ARGS = {**{name: {0: dict(rp_dim=10000, first_session_adapt=1, adapt_lr=0.01, n_epochs=20, batch_size=48,
                                   **({} if name == "seq-cifar100-224" else {"backbone": "vit_base_patch16_224"}))}
                    for name in ("seq-cifar100-224", "seq-imagenet-r", "seq-cub200")},
                 "seq-digits": {0: dict(rp_dim=1000)}}

    @classmethod
    def check_args(cls, args, n_tasks: int, domain_il: bool) -> None:
        super().check_args(args, n_tasks, domain_il)
        if args.classifier != "fc":
            raise ValueError(f"--model ranpac replaces the head by its ridge-regression classifier: "
                             f"--classifier {args.classifier} would be unused; leave --classifier out")

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        d, m, k = self.backbone.feature_dim, args.rp_dim, len(setting.task_of_class)
        draw = make_generator(args.seed, "ranpac-projection")  # on the CPU: the same matrix on every device
        self.register_buffer("projection", torch.randn(d, m, generator=draw).to(setting.device))
        # float64: G sums N outer products of M-vectors, and lambda spans 21 orders of magnitude
        self.register_buffer("gram", torch.zeros(m, m, dtype=torch.float64, device=setting.device))
        self.register_buffer("class_sums", torch.zeros(m, k, dtype=torch.float64, device=setting.device))
        self.register_buffer("weight", torch.zeros(m, k, device=setting.device))
        self.ridge_generator = make_generator(args.seed, "ranpac-ridge", setting.device)

    def generators(self) -> dict:
        return {**super().generators(), "ranpac-ridge": self.ridge_generator}

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.relu(feats @ self.projection)

    @torch.no_grad()
    def fit(self, task, feats, labels):
        z = self.project(feats).double()
        y = torch.nn.functional.one_hot(labels, len(self.setting.task_of_class)).double()
        self.gram += z.T @ z
        self.class_sums += z.T @ y
        self.ridge = choose_ridge(z, y, self.ridge_generator)
        self.weight.copy_(ridge_solve(self.gram, self.class_sums, self.ridge).float())

    def scores(self, feats):
        return self.project(feats) @ self.weight
