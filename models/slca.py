"""SLCA (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for Continual Learning on a Pre-trained
Model", ICCV 2023), as their code (GengDavid/SLCA, models/slca.py and exps/slca/*.json) runs it.

Slow learner: the whole network is fine-tuned on each task with SGD
(momentum 0.9, weight decay 5e-4), the backbone at ``--lr`` times
``--backbone_lr_scale`` (1/100) and the head at ``--lr``, the rates x0.1 after
epoch ``--lr_decay_epoch``; the loss covers the current task's classes only
(``--masked_softmax 1`` in the reference rows).  Classifier alignment: after
each task the mean and covariance of every new class's features (training
images, no augmentation) are stored; from the second task on, the head alone
is trained for ``--ca_epochs`` epochs (SGD at ``--lr``, cosine-annealed, weight
decay) on ``--ca_samples`` features per seen class drawn from their Gaussians
(covariance + 1e-4 I; the means of older tasks' classes shrunk by
``0.9 + 0.1 (t + 1) / (T + 1)`` for class task t of T + 1 seen), in batches of
``--ca_samples``, with the logits divided by their mean per-task norm and by
``--ca_logit_norm`` (0.1; 0: plain logits).

How ``--classifier`` enters: the head is the one chosen and is trained in
both stages.  With ``fc`` (the paper) alignment trains its weights and bias;
with a fixed head (``fno``, ``etf``, ``orth``) only its learnable scale can
move (and the logit normalisation cancels a common scale), so alignment leaves
it as it is and the slow learner does the work; a head with nothing to train
(``--fno_scale 0``) skips alignment.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import register_model
from models.sgd import Sgd
from utils.cli import Flag, non_negative, non_negative_int, positive
from utils.seeding import make_generator

COVARIANCE_JITTER = 1e-4  # added to every covariance's diagonal, so that a class with few images still samples


@register_model("slca")
class SLCA(Sgd):  # its stream steps are fine-tuning steps (Sgd.observe)
    NEEDS_BOUNDARIES = True  # aligns the classifier with each task's class statistics at its end
    FEATURE_BATCH = 128
    FLAGS = {
        "backbone_lr_scale": Flag(positive(float), 0.01, "the backbone's lr is --lr times this (the slow learner)"),
        "lr_decay_epoch": Flag(non_negative_int, 0, "the rates are multiplied by 0.1 after this epoch (0: never)"),
        "optim_mom": Flag(non_negative(float), 0.9, "SGD momentum of both stages"),
        "optim_wd": Flag(non_negative(float), 5e-4, "SGD weight decay of both stages"),
        "ca_epochs": Flag(non_negative_int, 5, "classifier-alignment epochs after each task from the second (0: none)"),
        "ca_samples": Flag(positive(int), 256, "features sampled per seen class in each alignment epoch"),
        "ca_logit_norm": Flag(non_negative(float), 0.1, "alignment logits / (mean per-task norm x this); 0: plain"),
    }
    # --load_best_args: their exps/slca/slca_{cifar,imgnetr,cub}.json and models/slca.py (GengDavid/SLCA): lr 0.01,
    # backbone x0.01, batch 128, epochs 20 / 50 / 50 with the decay after epoch 18 / 40 / 40, alignment 5 epochs of
    # 256 samples per class, logit norm 0.1; their stage-1 loss covers the current task's classes: masked softmax.
    BEST_ARGS = {
        "seq-cifar100-224": {0: dict(lr=0.01, n_epochs=20, lr_decay_epoch=18, batch_size=128, masked_softmax=1)},
        "seq-imagenet-r": {0: dict(lr=0.01, n_epochs=50, lr_decay_epoch=40, batch_size=128, masked_softmax=1)},
        "seq-cub200": {0: dict(lr=0.01, n_epochs=50, lr_decay_epoch=40, batch_size=128, masked_softmax=1)},
        "seq-digits": {0: dict(lr=0.1, backbone_lr_scale=1.0)},  # this project's smoke row: SGD's lr, one rate
    }

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        k, d = len(setting.task_of_class), self.network.backbone.feature_dim
        self.register_buffer("means", torch.zeros(k, d, device=setting.device))
        self.register_buffer("covariances", torch.zeros(k, d, d, device=setting.device))
        self.register_buffer("seen", torch.zeros(k, dtype=torch.bool, device=setting.device))
        self.ca_generator = make_generator(args.seed, "slca-alignment", setting.device)

    @property
    def network(self):
        return getattr(self.net, "_orig_mod", self.net)

    def generators(self) -> dict:
        return {**super().generators(), "slca-alignment": self.ca_generator}

    def build_optimizer(self):
        a = self.args
        return torch.optim.SGD([
            {"params": list(self.network.backbone.parameters()), "lr": a.lr * a.backbone_lr_scale},
            {"params": list(self.network.head.parameters()), "lr": a.lr},
        ], lr=a.lr, momentum=a.optim_mom, weight_decay=a.optim_wd)

    def build_scheduler(self, opt):
        if not self.args.lr_decay_epoch:
            return None
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[self.args.lr_decay_epoch], gamma=0.1)

    @torch.no_grad()
    def store_statistics(self, data) -> None:
        """Mean and covariance of the features of each class of the task (training images, no augmentation)."""
        was_training = self.training
        self.network.eval()
        with self.autocast():
            feats = torch.cat([self.network.backbone(data.prepare(x)).float() for x, _ in
                               data.batches(self.FEATURE_BATCH)])
        self.network.train(was_training)
        for c in torch.unique(data.y).tolist():
            f = feats[data.y == c]
            self.means[c] = f.mean(0)
            centred = f - self.means[c]
            self.covariances[c] = centred.T @ centred / max(len(f) - 1, 1)
            self.seen[c] = True

    def sample_features(self, per_class: int) -> tuple:
        """``per_class`` features drawn from the stored Gaussian of every seen class (older tasks' means shrunk,
        see the module docstring), and their labels."""
        classes = torch.nonzero(self.seen).flatten()
        d = self.means.shape[1]
        eye = torch.eye(d, device=self.means.device)
        shrink = 0.9 + 0.1 * (self.setting.task_of_class[classes] + 1) / (self.current_task + 1)
        factors = torch.linalg.cholesky(self.covariances[classes] + COVARIANCE_JITTER * eye)  # C x D x D
        noise = torch.randn(len(classes), per_class, d, device=self.means.device, generator=self.ca_generator)
        samples = (self.means[classes] * shrink.unsqueeze(1)).unsqueeze(1) + noise @ factors.transpose(1, 2)
        return samples.reshape(-1, d), classes.repeat_interleave(per_class)

    def aligned_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The seen classes' logits divided by the mean of their per-task norms and by ``--ca_logit_norm``."""
        logits = logits[:, self.seen]
        if not self.args.ca_logit_norm:
            return logits
        tasks = self.setting.task_of_class[self.seen]
        per_task = torch.zeros(len(logits), int(tasks.max()) + 1, device=logits.device)
        per_task = per_task.index_add(1, tasks, logits.float() ** 2).sqrt() + 1e-7
        return logits / per_task.mean(1, keepdim=True) / self.args.ca_logit_norm

    def align_classifier(self) -> None:
        head = self.network.head
        params = [p for p in head.parameters() if p.requires_grad]
        if not params or not self.args.ca_epochs:
            return
        a = self.args
        opt = torch.optim.SGD(params, lr=a.lr, momentum=a.optim_mom, weight_decay=a.optim_wd)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.ca_epochs)
        seen_index = torch.cumsum(self.seen.long(), 0) - 1  # label -> its column among the seen classes
        for _ in range(a.ca_epochs):
            feats, labels = self.sample_features(a.ca_samples)
            order = torch.randperm(len(labels), device=labels.device, generator=self.ca_generator)
            for idx in order.split(a.ca_samples):  # batches of ca_samples, as the authors' alignment
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(self.aligned_logits(head(feats[idx])), seen_index[labels[idx]]).backward()
                opt.step()
            schedule.step()

    def end_task(self, task, data):
        self.store_statistics(data)
        if task > 0:  # as the authors: nothing to align after the first task
            self.align_classifier()
