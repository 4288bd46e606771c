"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
Continual Learning", CVPR 2023), as its authors' code (GT-RIPL/CODA-Prompt, models/zoo.py) runs it.

In each block of ``--prompt_layers`` a pool of ``--pool_size`` prompt
components ``P_m`` (``--prompt_length`` x A), keys ``K_m`` and attention vectors
``A_m`` (both D), split evenly among the benchmark's tasks.  For a query ``q``
(the frozen ViT's pre-logits feature) the prompt is ``sum_m alpha_m P_m`` with
``alpha_m = cos(q * A_m, K_m)`` (``*`` elementwise); its first half of rows are
prefix keys, the second half prefix values (``backbone/prompted_vit.py``).
Training on task t uses the components of tasks 0..t, those of finished tasks
detached (they receive no gradient), and adds ``--ortho_weight`` times, per
block, ``mean((M M^T - I)^2)`` for M = the used keys, attention vectors and
flattened components; test time uses the components of every task seen.  At the
start of every task its components are drawn orthonormal and orthogonal to
those already there (the authors re-draw them per task with Gram-Schmidt;
here exactly orthogonal to the span of the older ones, by QR).  The head reads
the class token.  Adam at ``--lr`` with the authors' cosine schedule
``lr cos(99 pi e / (200 (E - 1)))`` for epoch e of E; no gradient clipping.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backbone.prompted_vit import Prompts
from models import register_model
from models.prompt_model import HELP, PromptModel, check_layers, prompt_flags
from utils.cli import Flag, comma_list, non_negative, non_negative_int, positive
from utils.errors import UserError
from utils.seeding import make_generator


def orthonormal_rows(existing: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random orthonormal rows orthogonal to the rows of ``existing`` (s x d); needs s + n <= d."""
    s, d = existing.shape
    if s + n > d:
        raise UserError(f"CODA-Prompt: {s + n} orthogonal components do not fit in {d} dimensions; lower --pool_size")
    draw = torch.randn(n, d, generator=generator, device=generator.device).to(existing)
    if s:
        basis, _ = torch.linalg.qr(existing.T.double())          # d x s: an orthonormal basis of their span
        draw = (draw.double() - (draw.double() @ basis) @ basis.T).to(existing)
    q, _ = torch.linalg.qr(draw.T)
    return q.T


def ortho_penalty(m: torch.Tensor) -> torch.Tensor:
    """``mean((M M^T - I)^2)``: zero exactly when the rows of ``m`` are orthonormal."""
    gram = m @ m.T
    return (gram - torch.eye(len(m), device=m.device, dtype=m.dtype)).pow(2).mean()


class CodaPrompter(nn.Module):
    """Per block: components (M x L x A), keys and attention vectors (M x D); ``per_task`` of each for every task."""

    def __init__(self, layers, pool_size, length, embed_dim, width, n_tasks, ortho_weight):
        super().__init__()
        self.layers = list(layers)
        self.per_task = pool_size // n_tasks
        self.components = nn.Parameter(torch.zeros(len(self.layers), pool_size, length, width))
        self.keys = nn.Parameter(torch.zeros(len(self.layers), pool_size, embed_dim))
        self.attention = nn.Parameter(torch.zeros(len(self.layers), pool_size, embed_dim))
        self.ortho_weight = ortho_weight
        self.task = 0

    @torch.no_grad()
    def draw(self, task: int, generator: torch.Generator) -> None:
        """Give task ``task``'s components, keys and attention vectors fresh orthonormal values."""
        start, end = task * self.per_task, (task + 1) * self.per_task
        for param in (self.components, self.keys, self.attention):
            for layer in param:
                rows = layer.flatten(1)
                rows[start:end] = orthonormal_rows(rows[:start], end - start, generator)

    def used(self, param: torch.Tensor) -> torch.Tensor:
        """The components of tasks 0..task, the finished tasks' detached in training."""
        start, end = self.task * self.per_task, (self.task + 1) * self.per_task
        if not self.training:
            return param[:, :end]
        return torch.cat([param[:, :start].detach(), param[:, start:end]], dim=1)

    def forward(self, query: torch.Tensor) -> Prompts:
        keys, attention, components = (self.used(p) for p in (self.keys, self.attention, self.components))
        weighted = query.float()[None, :, None, :] * attention[:, None]                 # layers x B x k x D
        alpha = (F.normalize(weighted, dim=3) * F.normalize(keys, dim=2)[:, None]).sum(3)  # layers x B x k
        prompt = torch.einsum("nbk,nkla->nbla", alpha, components)                         # layers x B x L x A
        half = prompt.shape[2] // 2
        prefixes = {layer: (prompt[i, :, :half], prompt[i, :, half:]) for i, layer in enumerate(self.layers)}
        loss = None
        if self.training and self.ortho_weight:
            loss = self.ortho_weight * sum(ortho_penalty(keys[i]) + ortho_penalty(attention[i])
                                           + ortho_penalty(components[i].flatten(1)) for i in range(len(self.layers)))
        return Prompts(prefixes=prefixes, loss=loss)


@register_model("coda_prompt")
class CodaPrompt(PromptModel):
    DEFAULT_LR = 0.001  # configs/cifar-100_prompt.yaml and imnet-r_prompt.yaml: lr 0.001
    FLAGS = {
        **prompt_flags(clip_grad=0.0),                                          # no clipping in learners/prompt.py
        "prompt_layers": Flag(comma_list(non_negative_int), [0, 1, 2, 3, 4], "blocks with prompts (e.g. 0,1,2,3,4)",
                              metavar="I,J,..."),                               # models/zoo.py: e_layers [0..4]
        "pool_size": Flag(positive(int), 100, HELP["pool_size"]),
        "prompt_length": Flag(positive(int), 8, HELP["prompt_length"]),
        "ortho_weight": Flag(non_negative(float), 0.0, "weight of the orthogonality penalty (mu)"),
    }  # experiments/*.sh: --prompt_param 100 8 0.0 (pool, length, mu; "with updated code, now can be 0")
    # --load_best_args: configs/cifar-100_prompt.yaml (batch 128, 20 epochs, Adam lr 0.001, cosine) and
    # imnet-r_prompt.yaml (50 epochs); CUB-200: no published setting, ImageNet-R's row.  Weights: timm 0.4.12's
    # vit_base_patch16_224 (requirements.txt), ImageNet-21k fine-tuned on ImageNet-1k (augreg_in21k_ft_in1k now).
    BEST_ARGS = {
        "seq-cifar100-224": {0: dict(lr=0.001, batch_size=128, n_epochs=20, masked_softmax=1,
                                     backbone="vit_base_patch16_224.augreg_in21k_ft_in1k")},
        "seq-imagenet-r": {0: dict(lr=0.001, batch_size=128, n_epochs=50, masked_softmax=1,
                                   backbone="vit_base_patch16_224.augreg_in21k_ft_in1k")},
        "seq-cub200": {0: dict(lr=0.001, batch_size=128, n_epochs=50, masked_softmax=1,
                               backbone="vit_base_patch16_224.augreg_in21k_ft_in1k")},
    }

    @classmethod
    def check_args(cls, args, n_tasks, domain_il):
        super().check_args(args, n_tasks, domain_il)
        if args.pool_size < n_tasks:
            raise ValueError(f"--pool_size {args.pool_size}: CODA-Prompt needs at least one component per task "
                             f"({n_tasks} tasks)")
        if args.prompt_length < 2:
            raise ValueError(f"--prompt_length {args.prompt_length}: CODA-Prompt splits it into prefix keys and "
                             f"values; give at least 2")

    def __init__(self, net, args, setting):
        self.draws = make_generator(args.seed, "coda-components", setting.device)
        super().__init__(net, args, setting)

    def build_prompter(self, vit):
        a = self.args
        check_layers(a.prompt_layers, len(vit.blocks), "prompt_layers")
        width = vit.blocks[0].attn.num_heads * vit.blocks[0].attn.head_dim
        prompter = CodaPrompter(a.prompt_layers, a.pool_size, a.prompt_length, vit.embed_dim, width,
                                self.setting.n_tasks, a.ortho_weight)
        prompter.draw(0, self.draws)
        return prompter

    def generators(self):
        return {**super().generators(), "coda-components": self.draws}

    def begin_task(self, task, data):
        super().begin_task(task, data)
        if task > 0:  # task 0's were drawn when the model was built
            self.prompter.draw(task, self.draws)

    def build_scheduler(self, opt):
        epochs = self.args.n_epochs
        if epochs < 2:
            return None
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: math.cos(99 * math.pi * e / (200 * (epochs - 1))))
