"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022),
as its authors' colleagues' PyTorch code (JH-LEE-KR/dualprompt-pytorch, followed by Mammoth and LAMDA-PILOT) runs it.

Prefix tuning (``backbone/prompted_vit.py``) in two places: a G-prompt shared
by all tasks in the blocks ``--g_prompt_layers`` (``--g_prompt_length`` keys
and as many values per block), and one E-prompt per task in the blocks
``--e_prompt_layers`` (``--prompt_length`` keys and values per block), each
E-prompt with a learned key.  Training on task t uses E-prompt t and pulls its
key to the query (``--key_weight`` times ``1 - cos(q, key_t)``, batch mean);
at test time each image takes the E-prompt whose key is closest to its query
(cosine), among all ``--pool_size`` keys as the code does.  Before task t > 0
E-prompt t starts as a copy of E-prompt t - 1 (the code's ``shared_prompt_pool``;
keys are not copied).  Prompts and keys are drawn uniformly from [-1, 1).
The head reads the class token.

Differences from the code: each image's key and value prefixes are its own
(the code's reshape without a permutation mixes the key and value halves and
the images of a batch, its issue #56, which Mammoth keeps behind
``--use_permute_fix``); the batch-wise majority vote at test time is not offered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbone.prompted_vit import Prompts
from models import register_model
from models.prompt_model import HELP, PromptModel, check_layers, prompt_flags, uniform_
from utils.cli import Flag, comma_list, non_negative, non_negative_int, positive


class DualPrompter(nn.Module):
    """G-prompt ``g`` (G layers x 2 x Lg x A), E-prompts ``e`` (M x E layers x 2 x Le x A), E-keys (M x D)."""

    def __init__(self, g_layers, g_length, e_layers, e_length, pool_size, embed_dim, width, key_weight):
        super().__init__()
        self.g_layers, self.e_layers = list(g_layers), list(e_layers)
        self.g = uniform_((len(self.g_layers), 2, g_length, width))
        self.e = uniform_((pool_size, len(self.e_layers), 2, e_length, width))
        self.keys = uniform_((pool_size, embed_dim))
        self.key_weight = key_weight
        self.task = 0  # the E-prompt trained now (set by the method at every task)

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        return F.normalize(query.float(), dim=1) @ F.normalize(self.keys, dim=1).T

    def choose(self, query: torch.Tensor) -> tuple:
        """(the E-prompt of every image, the similarities): the task's in training, the best key's at test time."""
        sim = self.similarity(query)
        if self.training:
            return torch.full((len(query),), self.task, dtype=torch.long, device=query.device), sim
        return sim.argmax(1), sim

    def forward(self, query: torch.Tensor) -> Prompts:
        chosen, sim = self.choose(query)
        batch = len(query)
        prefixes = {layer: (self.g[i, 0].expand(batch, -1, -1), self.g[i, 1].expand(batch, -1, -1))
                    for i, layer in enumerate(self.g_layers)}
        e = self.e[chosen]                                                 # B x E layers x 2 x Le x A
        prefixes.update({layer: (e[:, i, 0], e[:, i, 1]) for i, layer in enumerate(self.e_layers)})
        key_loss = (1 - sim.gather(1, chosen.unsqueeze(1))).mean()
        return Prompts(prefixes=prefixes, loss=self.key_weight * key_loss)

    @torch.no_grad()
    def start_from_previous(self, task: int) -> None:
        if task > 0:
            self.e[task].copy_(self.e[task - 1])


@register_model("dualprompt")
class DualPrompt(PromptModel):
    DEFAULT_LR = 0.0028125  # 0.03 x batch 24 / 256 (dualprompt-pytorch configs/cifar100_dualprompt.py, --unscale_lr)
    FLAGS = {
        **prompt_flags(clip_grad=1.0),                                                  # --clip-grad 1.0
        "g_prompt_layers": Flag(comma_list(non_negative_int), [0, 1], "blocks with the G-prompt (e.g. 0,1)",
                                metavar="I,J,..."),                                     # --g_prompt_layer_idx 0 1
        "g_prompt_length": Flag(positive(int), 5, "G-prompt keys (and values) per block"),  # --g_prompt_length 5
        "e_prompt_layers": Flag(comma_list(non_negative_int), [2, 3, 4], "blocks with the E-prompt (e.g. 2,3,4)",
                                metavar="I,J,..."),                                     # --e_prompt_layer_idx 2 3 4
        "prompt_length": Flag(positive(int), 5, HELP["prompt_length"]),  # --length 5 (ImR: 20)
        "pool_size": Flag(positive(int), 10, HELP["pool_size"]),  # --size 10
        "key_weight": Flag(non_negative(float), 1.0, HELP["key_weight"]),  # pull_constraint_coeff 1.0
    }
    # --load_best_args: dualprompt-pytorch configs/cifar100_dualprompt.py (batch 24, 5 epochs, lr 0.03 x 24/256,
    # E-prompt length 5) and configs/imr_dualprompt.py (50 epochs, lr 0.005 x 24/256, length 20); CUB-200: no
    # published setting, ImageNet-R's row.  Weights: imagenet21k/ViT-B_16.npz (timm: vit_base_patch16_224.orig_in21k).
    BEST_ARGS = {
        "seq-cifar100-224": {0: dict(lr=0.0028125, batch_size=24, n_epochs=5, prompt_length=5, masked_softmax=1,
                                     backbone="vit_base_patch16_224.orig_in21k")},
        "seq-imagenet-r": {0: dict(lr=0.00046875, batch_size=24, n_epochs=50, prompt_length=20, masked_softmax=1,
                                   backbone="vit_base_patch16_224.orig_in21k")},
        "seq-cub200": {0: dict(lr=0.00046875, batch_size=24, n_epochs=50, prompt_length=20, masked_softmax=1,
                               backbone="vit_base_patch16_224.orig_in21k")},
    }

    @classmethod
    def check_args(cls, args, n_tasks, domain_il):
        super().check_args(args, n_tasks, domain_il)
        if args.pool_size < n_tasks:
            raise ValueError(f"--pool_size {args.pool_size}: DualPrompt needs one E-prompt per task ({n_tasks})")
        both = set(args.g_prompt_layers) & set(args.e_prompt_layers)
        if both:
            raise ValueError(f"block {min(both)} is in both --g_prompt_layers and --e_prompt_layers")

    def build_prompter(self, vit):
        a, depth = self.args, len(vit.blocks)
        check_layers(a.g_prompt_layers, depth, "g_prompt_layers")
        check_layers(a.e_prompt_layers, depth, "e_prompt_layers")
        width = vit.blocks[0].attn.num_heads * vit.blocks[0].attn.head_dim
        return DualPrompter(a.g_prompt_layers, a.g_prompt_length, a.e_prompt_layers, a.prompt_length, a.pool_size,
                            vit.embed_dim, width, a.key_weight)

    def begin_task(self, task, data):
        super().begin_task(task, data)
        self.prompter.start_from_previous(task)
