"""SSF (Lian et al., "Scaling & Shifting Your Features", NeurIPS 2022): a parameter-efficient module for a ViT.

Every linear layer and LayerNorm of the transformer blocks (and the final
LayerNorm) gets a learned per-channel scale and shift of its output,
``y * gamma + beta``, initialised to the identity (gamma = 1, beta = 0; SSF
draws them around these values).  The module is attached by forward hooks,
so timm's network is not copied or edited; APER and RanPAC train such a
module on the first task only and then freeze it.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError


class SSF(nn.Module):
    """Scale-and-shift parameters for the blocks of ``vit`` (a timm VisionTransformer); ``attach`` hooks them in."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        if not hasattr(vit, "blocks"):
            raise UserError(f"SSF adapts a timm VisionTransformer (with .blocks); got {type(vit).__name__}")
        self.targets = [m for m in list(vit.blocks.modules()) + [vit.norm]
                        if isinstance(m, (nn.Linear, nn.LayerNorm))]
        widths = [m.out_features if isinstance(m, nn.Linear) else m.normalized_shape[-1] for m in self.targets]
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(w)) for w in widths])
        self.shifts = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in widths])
        self.handles = []

    def attach(self) -> None:
        for module, scale, shift in zip(self.targets, self.scales, self.shifts):
            self.handles.append(module.register_forward_hook(
                lambda _m, _inputs, out, scale=scale, shift=shift: out * scale + shift))
