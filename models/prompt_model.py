"""The base of the prompt-based methods (L2P, DualPrompt, CODA-Prompt): a frozen pretrained ViT, learned prompts,
and the chosen head on the prompted feature.

The backbone (a ``backbone.vit.TimmViT``) is wrapped in a
``backbone.prompted_vit.PromptedViT`` whose ``prompter`` (the method's prompt
module) turns the query (the frozen network's pre-logits feature) into prompts
and the prompter's own loss term.  Trained, with Adam (betas 0.9 and 0.999, no
weight decay, as all three papers' code): the prompter, the head and the
backbone's ``--projection_dim`` layer when there is one; the ViT never.  A
fresh optimizer every task (their ``reinit_optimizer``).

The loss is ``stream_loss`` (``--masked_softmax 1``: logits masked to the
sample's task, which is what all three papers' code does) plus the prompter's
term.  Gradients are clipped to norm ``--clip_grad`` (L2P and DualPrompt: 1;
CODA-Prompt: none).  At evaluation classes not seen yet get the lowest logit
(the papers' code scores only the classes seen so far), and the query pass goes
through the feature cache (``--feature_cache``): test inputs repeat at every
evaluation, while training inputs are fresh random crops and are never cached.
"""
from __future__ import annotations

import torch

from backbone import get_backbone_class
from backbone.prompted_vit import PromptedViT
from backbone.vit import TimmViT
from models.continual_model import ContinualModel
from models.frozen_features import UNSEEN, FrozenFeatureModel
from utils.cli import Flag, non_negative
from utils.errors import UserError

ADAM_BETAS = (0.9, 0.999)  # l2p- and dualprompt-pytorch configs (--opt-betas); CODA-Prompt: (momentum 0.9, 0.999)


HELP = {  # flags the three methods share (each with its own default, which --help lists)
    "clip_grad": "clip the gradient norm to this (0: no clipping)",
    "pool_size": "L2P: prompts in the pool; DualPrompt: E-prompts (at least the tasks); CODA-Prompt: components "
                 "per block, split among the tasks",
    "prompt_length": "L2P: tokens per prompt; DualPrompt: E-prompt keys and values per block; CODA-Prompt: rows per "
                     "component, half prefix keys, half values",
    "key_weight": "weight of the key-matching loss",
}


def prompt_flags(clip_grad: float) -> dict:
    return {"feature_cache": FrozenFeatureModel.FLAGS["feature_cache"],
            "clip_grad": Flag(non_negative(float), clip_grad, HELP["clip_grad"])}


def check_layers(layers: list, depth: int, flag: str) -> None:
    bad = [i for i in layers if i >= depth]
    if bad:
        raise UserError(f"--{flag} {','.join(map(str, layers))}: block {bad[0]} does not exist; the backbone has "
                        f"blocks 0-{depth - 1}")


def uniform_(shape, low: float = -1.0, high: float = 1.0) -> torch.nn.Parameter:
    """A parameter drawn uniformly from [low, high) (the papers' ``prompt_init uniform``), global generator."""
    return torch.nn.Parameter(torch.empty(shape).uniform_(low, high))


class PromptModel(ContinualModel):
    NEEDS_BOUNDARIES = True

    @classmethod
    def check_args(cls, args, n_tasks, domain_il):
        super().check_args(args, n_tasks, domain_il)
        if not issubclass(get_backbone_class(args.backbone), TimmViT):
            raise ValueError(f"--model {cls.NAME} prompts a Vision Transformer; --backbone {args.backbone} is not "
                             f"one (use vit_base_patch16_224.augreg_in21k, vit_tiny_patch16_224, vit-micro, ...)")
        if args.compile:
            raise ValueError(f"--model {cls.NAME} runs its prompted passes outside the compiled network; "
                             f"use --compile 0")
        if args.collapse_metrics:
            raise ValueError(f"--model {cls.NAME}: the collapse diagnostics read the unprompted network's features; "
                             f"use --collapse_metrics 0")

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        prompter = self.build_prompter(net.backbone.net).to(setting.device)
        net.backbone = PromptedViT(net.backbone, prompter, bool(args.feature_cache))
        self.register_buffer("seen", torch.zeros(setting.num_classes, dtype=torch.bool, device=setting.device))

    def build_prompter(self, vit) -> torch.nn.Module:
        """The method's prompt module for the timm VisionTransformer ``vit``: ``prompter(query) -> Prompts``."""
        raise NotImplementedError

    @property
    def backbone(self) -> PromptedViT:
        return self.net.backbone

    @property
    def prompter(self):
        return self.net.backbone.prompter

    def trainable(self) -> list:
        return [p for p in self.net.parameters() if p.requires_grad]

    def build_optimizer(self):
        return torch.optim.Adam(self.trainable(), lr=self.args.lr, betas=ADAM_BETAS, weight_decay=0.0)

    def build_scheduler(self, opt):
        return None  # L2P and DualPrompt: a constant rate (their --sched constant)

    def begin_task(self, task, data):
        self.seen[data.y] = True
        self.prompter.task = task

    def prompted_loss(self, inputs, labels) -> torch.Tensor:
        backbone = self.backbone
        prompts = self.prompter(backbone.query(inputs))
        loss = self.stream_loss(self.net.head(backbone.prompted(inputs, prompts)), labels)
        return loss if prompts.loss is None else loss + prompts.loss

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.prompted_loss(inputs, labels))
        if self.args.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.args.clip_grad)
        self.opt.step()
        return loss

    def forward(self, x):
        return self.net(x).masked_fill(~self.seen, UNSEEN)
