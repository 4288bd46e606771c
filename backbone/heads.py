"""Classifier heads, one registry: ``--classifier NAME`` picks any head registered here.

A head maps post-ReLU features ``h`` (batch x D) to logits (batch x K).  Each
head class says whether it is ``FIXED`` (its class matrix is never trained)
and exposes that matrix through ``class_weights()`` (K x D) for diagnostics.
A new head is one class decorated with ``@register_head("name")`` in any
module of the ``backbone`` package; it is built as
``cls(feature_dim, num_classes, generator, args)``, where ``generator`` is the
run's own stream for the head's random draws (so FC and fixed heads share
every other random number) and ``args`` carries the head's own flags
(declared in ``FLAGS``, as methods declare theirs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backbone import get_backbone_class
from utils.cli import Flag, binary
from utils.errors import UserError
from utils.registry import lookup, names, registrar
from utils.seeding import make_generator

HEADS: dict = {}
register_head = registrar(HEADS, "classifier")


def get_head_class(name: str) -> type:
    return lookup(HEADS, "backbone", "classifier", name)


def head_names() -> list:
    return names(HEADS, "backbone")


def _need_dims(name: str, feature_dim: int, num_classes: int) -> None:
    if feature_dim < num_classes:
        raise UserError(f"the {name} head needs at least as many feature dimensions as classes; "
                        f"got feature_dim={feature_dim} < num_classes={num_classes}")


def fno_matrix(num_classes: int, feature_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The FNO matrix Q (K x D): rows are L2-normalised indicators of disjoint blocks.

    The D feature dimensions are randomly partitioned into K blocks; each class
    gets floor(D/K) dimensions and the D mod K leftovers go one each to randomly
    chosen classes.  Rows are therefore non-negative and orthonormal, and every
    dimension belongs to exactly one class (feature dimension separation).
    """
    _need_dims("FNO", feature_dim, num_classes)
    sizes = torch.full((num_classes,), feature_dim // num_classes, dtype=torch.long)
    lucky = torch.randperm(num_classes, generator=generator)[: feature_dim % num_classes]
    sizes[lucky] += 1
    dims = torch.randperm(feature_dim, generator=generator)
    owner = torch.repeat_interleave(torch.arange(num_classes), sizes)  # class of the i-th drawn dim
    q = torch.zeros(num_classes, feature_dim)
    q[owner, dims] = 1.0
    return q / sizes.unsqueeze(1).to(q.dtype).sqrt()


def simplex_etf(num_classes: int, feature_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A simplex equiangular tight frame, K x D (one unit-norm row per class).

    M = sqrt(K / (K - 1)) * P (I_K - 1 1^T / K) with P (D x K) the orthonormal
    factor of the QR decomposition of a uniform [0, 1) matrix, as the
    long-tail authors (and Yang et al.) draw it; the rows of M^T have unit norm
    and pairwise cosine -1 / (K - 1), the geometry of neural collapse.
    """
    if num_classes < 2:
        raise UserError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    _need_dims("ETF", feature_dim, num_classes)
    uniform = torch.rand(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    p, _ = torch.linalg.qr(uniform)  # D x K, orthonormal columns
    centring = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    m = math.sqrt(num_classes / (num_classes - 1)) * p @ centring
    return m.T.contiguous().float()


def random_orthogonal(num_classes: int, feature_dim: int, generator: torch.Generator) -> torch.Tensor:
    """K x D with orthonormal rows of both signs: the QR factor of a standard normal matrix.

    The control for FNO: orthogonal like Q but not non-negative, so a run with
    it tells whether non-negativity or orthogonality is what helps.
    """
    _need_dims("orth", feature_dim, num_classes)
    gaussian = torch.randn(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    p, r = torch.linalg.qr(gaussian)
    p = p * torch.sign(torch.diagonal(r))  # the unique QR with a positive diagonal: Haar-distributed
    return p.T.contiguous().float()


@register_head("fc")
class FCHead(nn.Linear):
    """The baseline: a learnable linear layer with bias."""

    FIXED = False
    FLAGS: dict = {}

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator | None = None, args=None):
        super().__init__(feature_dim, num_classes, bias=True)

    def class_weights(self) -> torch.Tensor:
        return self.weight.detach()


class FixedHead(nn.Module):
    """logits = s * (W h) with W (K x D) a fixed buffer, no bias, and s one learnable scalar
    initialised to 1 (the authors' "weighted softmax"), or s = 1 fixed when ``scale`` is off."""

    FIXED = True
    FLAGS: dict = {}

    def __init__(self, weight: torch.Tensor, scale: bool = True):
        super().__init__()
        self.register_buffer("weight", weight)
        if scale:
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.ones(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(h, self.weight)

    def class_weights(self) -> torch.Tensor:
        return self.weight


@register_head("fno")
class FNOHead(FixedHead):
    """Fixed Non-negative Orthogonal head: W = Q (``fno_matrix``), with the learnable scale unless ``--fno_scale 0``."""

    FLAGS = {"fno_scale": Flag(binary, 1, "1: FNO logits times one learnable scalar initialised to 1, "
                                          "as the authors; 0: no scale", metavar="{0,1}")}

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator, args=None):
        super().__init__(fno_matrix(num_classes, feature_dim, generator),
                         scale=bool(getattr(args, "fno_scale", 1)))


@register_head("etf")
class ETFHead(FixedHead):
    """Fixed simplex-ETF head (Yang et al.; the long-tail ETF baseline) with the same learnable scale as FNO."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator, args=None):
        super().__init__(simplex_etf(num_classes, feature_dim, generator))


@register_head("orth")
class OrthHead(FixedHead):
    """Fixed random orthogonal head with signed entries (FNO minus non-negativity), same learnable scale."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator, args=None):
        super().__init__(random_orthogonal(num_classes, feature_dim, generator))


def make_head(kind: str, feature_dim: int, num_classes: int, generator: torch.Generator, args=None) -> nn.Module:
    """Build the head registered as ``kind``; ``generator`` is used only by heads that draw (the fixed ones)."""
    return get_head_class(kind)(feature_dim, num_classes, generator, args)


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


def build_network(args, input_shape: tuple, num_classes: int) -> Network:
    """Backbone first, then the head: the backbone's initialisation does not depend on the head,
    and the FNO partition comes from its own generator, so FC and FNO runs share every shared layer."""
    backbone_cls = get_backbone_class(args.backbone)
    if hasattr(backbone_cls, "FLAGS"):
        backbone = backbone_cls(input_shape, args=args)  # a backbone with its own flags (--pretrained) reads them
    else:
        backbone = backbone_cls(input_shape)
    head = make_head(args.classifier, backbone.feature_dim, num_classes, make_generator(args.seed, "fno-partition"),
                     args)
    if hasattr(backbone, "init_head"):  # a backbone whose reference code also initialises the classifier
        backbone.init_head(head)
    return Network(backbone, head)
