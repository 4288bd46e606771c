"""Heads that rival FNO: the cosine classifier and the fixed Regular Polytope Classifier.

* ``cosine``: logits = s * cos(w_k, h), learnable class weights w_k, no bias.  With the default fixed
  s = 10 it is Mammoth's ER-ACE classifier (``CustomLinear`` in ``models/er_ace.py``, the ER-ACE
  authors' own head); ``--cosine_learn_scale 1`` makes s one learnable scalar, as LUCIR's sigma
  (Hou et al., CVPR 2019; Mammoth's ``models/lucir.py`` initialises it to 1: ``--cosine_scale 1``).
* ``rpc``: the Regular Polytope Classifier (Pernici et al., "Regular Polytope Networks", TNNLS 2021):
  a learnable linear layer (with bias) maps the features to d dimensions, and the logits are the dot
  products with K fixed unit vertices of a regular polytope in R^d: the d-simplex (d = K - 1, pairwise
  cosine -1 / (K - 1); Mammoth's ``rpc`` and ``xder_rpc`` use it, on the network's first K - 1
  outputs), the d-cube (d = ceil(log2 K), the first K of the 2^d vertices) or the d-orthoplex
  (d = ceil(K / 2), +-e_1, +-e_2, ...).  The vertices need no random draw.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from backbone.heads import register_head
from utils.cli import Flag, binary, positive
from utils.errors import UserError

POLYTOPES = ("simplex", "cube", "orthoplex")


def polytope_name(text: str) -> str:
    if text not in POLYTOPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(POLYTOPES)}, got {text[:40]!r}")
    return text


def simplex_vertices(num_classes: int) -> torch.Tensor:
    """K unit vertices of the regular simplex in R^(K-1), pairwise cosine -1 / (K - 1), summing to 0.

    The centred standard basis e_k - 1/K lies in the (K-1)-dimensional subspace orthogonal to the
    all-ones vector; its coordinates in an orthonormal basis of that subspace (the Helmert basis), made
    unit norm, are the vertices.
    """
    k = num_classes
    basis = torch.zeros(k, k - 1, dtype=torch.float64)  # column j: (1, ..., 1, -(j+1), 0, ...) / norm
    for j in range(k - 1):
        basis[: j + 1, j] = 1.0
        basis[j + 1, j] = -(j + 1.0)
        basis[:, j] /= math.sqrt((j + 1) * (j + 2))
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k
    return F.normalize(centred @ basis, dim=1).float()


def cube_vertices(num_classes: int) -> torch.Tensor:
    """The first K vertices (in binary order) of the d-cube {-1, 1}^d / sqrt(d), d = ceil(log2 K)."""
    d = max(1, math.ceil(math.log2(num_classes)))
    bits = (torch.arange(num_classes).unsqueeze(1) >> torch.arange(d - 1, -1, -1)) & 1
    return (2.0 * bits.float() - 1.0) / math.sqrt(d)


def orthoplex_vertices(num_classes: int) -> torch.Tensor:
    """The first K of the d-orthoplex's vertices e_1, -e_1, e_2, -e_2, ..., d = ceil(K / 2)."""
    d = math.ceil(num_classes / 2)
    v = torch.zeros(num_classes, d)
    k = torch.arange(num_classes)
    v[k, k // 2] = 1.0 - 2.0 * (k % 2).float()
    return v


VERTICES = {"simplex": simplex_vertices, "cube": cube_vertices, "orthoplex": orthoplex_vertices}


@register_head("cosine")
class CosineHead(nn.Module):
    """logits = s * normalize(W) normalize(h): learnable W (K x D), no bias, s fixed or learnable."""

    FIXED = False
    FLAGS = {
        "cosine_scale": Flag(positive(float), 10.0, "cosine head: the scale s of the cosines (Mammoth's ER-ACE "
                                                    "classifier: 10); with --cosine_learn_scale 1 its start"),
        "cosine_learn_scale": Flag(binary, 0, "cosine head: 1 makes the scale one learnable scalar (LUCIR's "
                                              "sigma, which starts at 1); 0 keeps it fixed", metavar="{0,1}"),
    }

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator | None = None, args=None):
        super().__init__()
        # PyTorch's nn.Linear draw (as Mammoth's CustomLinear and LUCIR's uniform(-1/sqrt(D), 1/sqrt(D))),
        # from the global stream like the FC head's; not an nn.Linear, so no backbone re-initialises it
        bound = 1.0 / math.sqrt(feature_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim).uniform_(-bound, bound))
        scale = torch.tensor(float(getattr(args, "cosine_scale", 10.0)))
        if getattr(args, "cosine_learn_scale", 0):
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(h, dim=1), F.normalize(self.weight, dim=1))

    def class_weights(self) -> torch.Tensor:
        """The unit class directions the cosines are taken with."""
        return F.normalize(self.weight.detach(), dim=1)


@register_head("rpc")
class RPCHead(nn.Module):
    """logits = V (P h + b): a learnable projection P, b to R^d and K fixed unit polytope vertices V (K x d).

    ``FIXED``: the classifier V is never trained (the projection is the network's last learnable layer,
    as in the paper).  ``class_weights`` is the linear map from the features to the logits, V P (the
    bias left out, as the FC head's), so the collapse diagnostics see the head as it acts on h.
    """

    FIXED = True
    FLAGS = {"rpc_polytope": Flag(polytope_name, "simplex", "rpc head: the regular polytope whose vertices are "
                                                            "the fixed classes (Mammoth's rpc: simplex)",
                                  metavar="{" + ",".join(POLYTOPES) + "}")}

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator | None = None, args=None):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"the rpc head needs at least 2 classes, got {num_classes}")
        vertices = VERTICES[getattr(args, "rpc_polytope", "simplex")](num_classes)
        self.register_buffer("weight", vertices)
        self.projection = nn.Linear(feature_dim, vertices.shape[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.projection(h), self.weight)

    def class_weights(self) -> torch.Tensor:
        return (self.weight @ self.projection.weight).detach()
