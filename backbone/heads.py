"""Classifier heads: the learnable FC baseline and the Fixed Non-negative Orthogonal head."""
from __future__ import annotations

import math

import torch
from torch import nn

from utils.errors import UserError
import torch.nn.functional as F

HEADS = ("fc", "fno")


def fno_matrix(num_classes: int, feature_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The FNO matrix Q (K x D): rows are L2-normalised indicators of disjoint blocks.

    The D feature dimensions are randomly partitioned into K blocks; each class
    gets floor(D/K) dimensions and the D mod K leftovers go one each to randomly
    chosen classes.  Rows are therefore non-negative and orthonormal, and every
    dimension belongs to exactly one class (feature dimension separation).
    """
    if feature_dim < num_classes:
        raise UserError(f"the FNO head needs at least as many feature dimensions as classes; "
                         f"got feature_dim={feature_dim} < num_classes={num_classes}")
    sizes = torch.full((num_classes,), feature_dim // num_classes, dtype=torch.long)
    lucky = torch.randperm(num_classes, generator=generator)[: feature_dim % num_classes]
    sizes[lucky] += 1
    dims = torch.randperm(feature_dim, generator=generator)
    owner = torch.repeat_interleave(torch.arange(num_classes), sizes)  # class of the i-th drawn dim
    q = torch.zeros(num_classes, feature_dim)
    q[owner, dims] = 1.0
    return q / sizes.unsqueeze(1).to(q.dtype).sqrt()


class FCHead(nn.Linear):
    """The baseline: a learnable linear layer with bias."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(feature_dim, num_classes, bias=True)


class FNOHead(nn.Module):
    """logits = w * (Q h), Q fixed (a buffer), w one learnable scalar initialised to 1, no bias."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator):
        super().__init__()
        self.register_buffer("weight", fno_matrix(num_classes, feature_dim, generator))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(h, self.weight)


def make_head(kind: str, feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Module:
    """Build a head; ``generator`` is used only by FNO, so FC draws stay on the global stream."""
    if kind == "fc":
        return FCHead(feature_dim, num_classes)
    if kind == "fno":
        return FNOHead(feature_dim, num_classes, generator)
    raise UserError(f"unknown classifier {kind!r}; valid choices: {', '.join(HEADS)}")


class Network(nn.Module):
    """A backbone followed by a head; ``forward`` can also return the features."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.backbone(x)
        logits = self.head(h)
        return (logits, h) if return_features else logits
