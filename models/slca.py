"""SLCA (Zhang et al., "SLCA: Slow Learner with Classifier Alignment for Continual Learning on a Pre-trained
Model", ICCV 2023).

Slow learner: the whole network is fine-tuned on each task with SGD
(momentum 0.9), the backbone at ``--lr`` times ``--backbone_lr_scale`` (1/100
in the paper) and the head at ``--lr``.  Classifier alignment: after each
task the mean and covariance of every new class's features (training images,
no augmentation) are stored; then the head alone is trained for
``--ca_epochs`` epochs on features sampled from the Gaussians of every class
seen so far (``--ca_samples`` per class), which re-balances it over old and
new classes without any stored image.

How ``--classifier`` enters: the head is the one chosen and is trained in
both stages.  With ``fc`` (the paper) alignment trains its weights and bias;
with a fixed head (``fno``, ``etf``, ``orth``) only its learnable scale can
move, so alignment barely changes it and the slow learner does the work; a
head with nothing to train (``--fno_scale 0``) skips alignment.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import register_model
from models.continual_model import ContinualModel
from utils.cli import Flag, non_negative, non_negative_int, positive
from utils.seeding import make_generator

COVARIANCE_JITTER = 1e-4  # added to every covariance's diagonal, so that a class with few images still samples


@register_model("slca")
class SLCA(ContinualModel):
    FEATURE_BATCH = 128
    FLAGS = {
        "backbone_lr_scale": Flag(positive(float), 0.01, "the backbone's lr is --lr times this (the slow learner)"),
        "optim_mom": Flag(non_negative(float), 0.9, "SGD momentum of both stages"),
        "optim_wd": Flag(non_negative(float), 5e-4, "SGD weight decay of the slow learner"),
        "ca_epochs": Flag(non_negative_int, 5, "classifier-alignment epochs after each task (0: none)"),
        "ca_samples": Flag(positive(int), 256, "features sampled per seen class in each alignment epoch"),
        "ca_lr": Flag(positive(float), 0.01, "classifier-alignment learning rate"),
    }
    # --load_best_args: Zhang et al. 2023, Sec. 4.1 and their code (GengDavid/SLCA, configs/*_slca.json): lr 0.01
    # for the head, x0.01 for the backbone, batch 128, SGD momentum 0.9, weight decay 5e-4; 20 epochs on
    # CIFAR-100 and 50 on ImageNet-R and CUB-200; alignment 5 epochs, 256 samples per class, lr 0.01.  Only the
    # current task's classes are trained by the slow learner (a head per task in their code): the masked softmax.
    BEST_ARGS = {
        "seq-cifar100-224": {0: dict(lr=0.01, n_epochs=20, batch_size=128, masked_softmax=1)},
        "seq-imagenet-r": {0: dict(lr=0.01, n_epochs=50, batch_size=128, masked_softmax=1)},
        "seq-cub200": {0: dict(lr=0.01, n_epochs=50, batch_size=128, masked_softmax=1)},
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

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.stream_loss(self.net(inputs), labels))
        self.opt.step()
        return loss

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
        """``per_class`` features drawn from the stored Gaussian of every seen class, and their labels."""
        classes = torch.nonzero(self.seen).flatten()
        d = self.means.shape[1]
        eye = torch.eye(d, device=self.means.device)
        factors = torch.linalg.cholesky(self.covariances[classes] + COVARIANCE_JITTER * eye)  # C x D x D
        noise = torch.randn(len(classes), per_class, d, device=self.means.device, generator=self.ca_generator)
        samples = self.means[classes].unsqueeze(1) + noise @ factors.transpose(1, 2)
        return samples.reshape(-1, d), classes.repeat_interleave(per_class)

    def align_classifier(self) -> None:
        head = self.network.head
        params = [p for p in head.parameters() if p.requires_grad]
        if not params or not self.args.ca_epochs:
            return
        opt = torch.optim.SGD(params, lr=self.args.ca_lr, momentum=self.args.optim_mom)
        for _ in range(self.args.ca_epochs):
            feats, labels = self.sample_features(self.args.ca_samples)
            order = torch.randperm(len(labels), device=labels.device, generator=self.ca_generator)
            for idx in order.split(self.args.ca_samples):  # batches of ca_samples, as the authors' alignment
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(feats[idx]), labels[idx]).backward()
                opt.step()

    def end_task(self, task, data):
        self.store_statistics(data)
        self.align_classifier()
