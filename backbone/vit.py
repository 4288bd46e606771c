"""Vision Transformers from timm, as pretrained feature extractors for continual learning.

timm's ``VisionTransformer`` is used as it is (``timm.create_model`` with
``num_classes=0``), so the feature is timm's pre-logits output: the CLS token
after the final LayerNorm, D = 768 for ViT-B/16, 192 for ViT-Ti/16.  The
network keeps timm's parameter names under ``.net``, so timm checkpoints and
``.safetensors`` files load into it as they are, and methods that add prompts
or adapters reach the blocks as ``backbone.net.blocks``.

That feature is signed (a LayerNorm output), while FNO's theory wants
non-negative features.  ``--feature_activation relu`` applies a ReLU to it
(after the optional learned ``--projection_dim`` layer).  The default is
``none``: the feature the published methods use, so that an FC or prototype
run reproduces them; with a ReLU half of a frozen feature's coordinates
become zero, which is a change of the method, to be asked for explicitly.
``--projection_dim M`` adds a learned linear layer D -> M before the
activation, for heads that need more dimensions than the ViT has (FNO, ETF and
orth need D >= the number of classes: ViT-Ti's 192 < ImageNet-R's 200).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from backbone import register_backbone
from backbone.weights import HUB, NONE, load_strict, preflight, weights_source
from utils.cli import Flag, non_negative_int
from utils.errors import UserError

FEATURE_ACTIVATIONS = ("none", "relu")


def feature_activation(text: str) -> str:
    if text not in FEATURE_ACTIVATIONS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(FEATURE_ACTIVATIONS)}, got {text!r}")
    return text


def vit_flags(pretrained_default: str) -> dict:
    return {
        "pretrained": Flag(weights_source, pretrained_default,
                           "hub: the published weights through timm (network or timm's cache); none: random "
                           "initialisation; FILE: a local state dict or .safetensors file (strict)",
                           metavar="{hub,none,FILE}"),
        "feature_activation": Flag(feature_activation, "none",
                                   "none: the ViT's signed pre-logits feature, as the published methods use it; "
                                   "relu: non-negative features (FNO's assumption)", metavar="{none,relu}"),
        "projection_dim": Flag(non_negative_int, 0, "M > 0: a learned linear layer D -> M before the activation "
                                                    "(heads that need more dimensions than D); 0: none"),
    }


class TimmViT(nn.Module):
    """A timm ViT with its classifier removed; ``TIMM_NAME`` names the architecture and its published weights."""

    TIMM_NAME = ""
    CONFIG: dict = {}   # VisionTransformer arguments, for a configuration timm does not name (no weights)
    FLAGS = vit_flags(HUB)

    def __init__(self, input_shape, args=None):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise UserError(f"{self.weight_name()} needs RGB images (3, height, width); got input shape "
                            f"{tuple(input_shape)}")
        pretrained = getattr(args, "pretrained", None) or NONE
        size = tuple(input_shape[1:])
        if self.CONFIG:
            from timm.models.vision_transformer import VisionTransformer
            net = VisionTransformer(img_size=size, num_classes=0, **self.CONFIG)
        else:
            import timm
            net = timm.create_model(self.TIMM_NAME, pretrained=pretrained == HUB, num_classes=0, img_size=size)
        if pretrained not in (HUB, NONE):
            load_strict(net, pretrained, dropped_prefixes=("head.",))
        self.net = net
        width = getattr(args, "projection_dim", 0) or 0
        self.projection = nn.Linear(net.num_features, width) if width else nn.Identity()
        relu = getattr(args, "feature_activation", "none") == "relu"
        self.activation = nn.ReLU() if relu else nn.Identity()
        self.feature_dim = width or net.num_features

    @classmethod
    def weight_name(cls) -> str:
        return cls.TIMM_NAME or cls.__name__

    @classmethod
    def preflight(cls, values: dict) -> None:
        """Called when the command line is resolved: refuse weights that cannot be had before data is read."""
        if cls.CONFIG:
            preflight(values["pretrained"], cls.weight_name(), lambda: False, None)
            return
        preflight(values["pretrained"], cls.TIMM_NAME, lambda: hub_cached(cls.TIMM_NAME), "huggingface.co")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.projection(self.net(x)))


def hub_cached(timm_name: str) -> bool:
    """Whether the Hugging Face cache already holds the weights timm would download for ``timm_name``."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str)
               for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


@register_backbone("vit_tiny_patch16_224")
class ViTTiny16(TimmViT):
    """ViT-Ti/16 (D = 192): quick runs; timm's default weights are ImageNet-21k, fine-tuned on ImageNet-1k."""
    TIMM_NAME = "vit_tiny_patch16_224"


@register_backbone("vit_base_patch16_224")
class ViTBase16(TimmViT):
    """ViT-B/16 (D = 768) with timm's default weights (ImageNet-21k, fine-tuned on ImageNet-1k)."""
    TIMM_NAME = "vit_base_patch16_224"


@register_backbone("vit_base_patch16_224.augreg_in21k")
class ViTBase16In21k(TimmViT):
    """ViT-B/16 pretrained on ImageNet-21k only: the start of L2P, DualPrompt, SLCA and RanPAC."""
    TIMM_NAME = "vit_base_patch16_224.augreg_in21k"


@register_backbone("vit_base_patch16_224.orig_in21k")
class ViTBase16OrigIn21k(TimmViT):
    """ViT-B/16 with the original ImageNet-21k weights (imagenet21k/ViT-B_16.npz): L2P's and DualPrompt's start."""
    TIMM_NAME = "vit_base_patch16_224.orig_in21k"


@register_backbone("vit_base_patch16_224.augreg_in21k_ft_in1k")
class ViTBase16In21kFtIn1k(TimmViT):
    """ViT-B/16, ImageNet-21k fine-tuned on ImageNet-1k (timm 0.4's vit_base_patch16_224): CODA-Prompt's start."""
    TIMM_NAME = "vit_base_patch16_224.augreg_in21k_ft_in1k"


@register_backbone("vit-micro")
class ViTMicro(TimmViT):
    """A 2-block, 64-wide ViT with 16x16 patches and no published weights: for tests and CPU smoke runs only."""
    CONFIG = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
    FLAGS = vit_flags(NONE)
