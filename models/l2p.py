"""L2P (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022), as the PyTorch code of its authors'
colleagues (JH-LEE-KR/l2p-pytorch, which Mammoth and LAMDA-PILOT follow) runs it.

A pool of ``--pool_size`` prompts, each ``--prompt_length`` tokens, with one
learned key each (both drawn uniformly from [-1, 1)).  For an image the query
``q`` is the frozen ViT's pre-logits feature; the ``--top_k`` prompts whose keys
have the highest cosine similarity to ``q`` are concatenated and inserted after
the class token (prompt tuning).  The head reads the mean of the prompt tokens'
outputs (``--head_type prompt``, the paper's choice) or the class token
(``cls``).  The surrogate loss pulls the chosen keys to their query:
``--key_weight`` times the sum over the k chosen keys of ``1 - cos(q, key)``,
averaged over the batch (the code's ``-coeff * reduce_sim`` up to a constant).
Test time selects per image; the code's batch-wise majority vote
(``batchwise_prompt``), which makes a prediction depend on the other images of
its batch, is not offered.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from backbone.prompted_vit import POOLS, Prompts
from models import register_model
from models.prompt_model import HELP, PromptModel, prompt_flags, uniform_
from utils.cli import Flag, non_negative, positive


def pool_name(text: str) -> str:
    if text not in POOLS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(POOLS)}, got {text!r}")
    return text


class PromptPool(nn.Module):
    """L2P's pool: ``prompts`` (M x L x D) and ``keys`` (M x D); ``forward(query)`` picks the top k per image."""

    def __init__(self, pool_size: int, length: int, top_k: int, embed_dim: int, key_weight: float, pool: str):
        super().__init__()
        self.prompts = uniform_((pool_size, length, embed_dim))
        self.keys = uniform_((pool_size, embed_dim))
        self.top_k, self.key_weight, self.pool = top_k, key_weight, pool
        self.task = 0  # unused: L2P selects by the query alone

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every query to every key (B x M)."""
        return F.normalize(query.float(), dim=1) @ F.normalize(self.keys, dim=1).T

    def forward(self, query: torch.Tensor) -> Prompts:
        sim = self.similarity(query)
        chosen = sim.topk(self.top_k, dim=1).indices                      # B x k
        tokens = self.prompts[chosen].flatten(1, 2)                       # B x kL x D
        key_loss = (1 - sim.gather(1, chosen)).sum(1).mean()
        return Prompts(tokens=tokens, pool=self.pool, loss=self.key_weight * key_loss)


@register_model("l2p")
class L2P(PromptModel):
    DEFAULT_LR = 0.001875  # 0.03 x batch 16 / 256 (l2p-pytorch configs/cifar100_l2p.py, --unscale_lr); PILOT: init_lr
    FLAGS = {
        **prompt_flags(clip_grad=1.0),                                   # l2p-pytorch: --clip-grad 1.0
        "pool_size": Flag(positive(int), 10, HELP["pool_size"]),  # l2p-pytorch: --size 10
        "prompt_length": Flag(positive(int), 5, HELP["prompt_length"]),  # --length 5
        "top_k": Flag(positive(int), 5, "prompts chosen per image (N)"),  # --top_k 5
        "key_weight": Flag(non_negative(float), 0.1, HELP["key_weight"]),  # pull_constraint_coeff
        "head_type": Flag(pool_name, "prompt", "what the head reads: prompt (the mean of the prompt tokens' outputs, "
                                               "the paper) or cls (the class token)", metavar="{prompt,cls}"),
    }
    # --load_best_args.  CIFAR-100: l2p-pytorch configs/cifar100_l2p.py (batch 16, 5 epochs, lr 0.03 x 16/256).
    # ImageNet-R: LAMDA-PILOT exps/l2p_inr.json (batch 32, 10 epochs, init_lr 0.001875); CUB-200: no published
    # setting, ImageNet-R's row.  Weights: ViT-B/16 ImageNet-21k (imagenet21k/ViT-B_16.npz in the code), which
    # timm calls vit_base_patch16_224.orig_in21k.  All: training logits masked to the task (train_mask).
    BEST_ARGS = {
        "seq-cifar100-224": {0: dict(lr=0.001875, batch_size=16, n_epochs=5, masked_softmax=1,
                                     backbone="vit_base_patch16_224.orig_in21k")},
        "seq-imagenet-r": {0: dict(lr=0.001875, batch_size=32, n_epochs=10, masked_softmax=1,
                                   backbone="vit_base_patch16_224.orig_in21k")},
        "seq-cub200": {0: dict(lr=0.001875, batch_size=32, n_epochs=10, masked_softmax=1,
                               backbone="vit_base_patch16_224.orig_in21k")},
    }

    @classmethod
    def check_args(cls, args, n_tasks, domain_il):
        super().check_args(args, n_tasks, domain_il)
        if args.top_k > args.pool_size:
            raise ValueError(f"--top_k {args.top_k} chooses more prompts than the pool holds (--pool_size "
                             f"{args.pool_size})")

    def build_prompter(self, vit):
        a = self.args
        return PromptPool(a.pool_size, a.prompt_length, a.top_k, vit.embed_dim, a.key_weight, a.head_type)
