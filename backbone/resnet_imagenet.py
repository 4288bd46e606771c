"""ResNet-18, ResNet-50 and ResNet-152 exactly as torchvision defines them, as feature extractors.

The classification layer is removed: features are the global average of the
last stage's post-ReLU output (D = 512 for ResNet-18, 2048 for the others).
torchvision is imported when a network is built, not when the backbone
registry is discovered.  The torchvision network keeps torchvision's parameter
names under ``.net``, so a torchvision state-dict file loads into ``.net`` as
it is (``main_lt.py --pretrained``; ``main.py --pretrained``, see
``backbone/weights.py``, whose ``hub`` is torchvision's ImageNet-1k download).
"""
import os

import torch
from torch import nn

from backbone import register_backbone
from backbone.weights import HUB, NONE, load_strict, preflight, weights_source
from utils.cli import Flag
from utils.errors import UserError


class TorchvisionResNet(nn.Module):
    ARCH = ""
    # main.py: random initialisation unless asked (what these backbones always did), so runs stay offline.
    FLAGS = {"pretrained": Flag(weights_source, NONE, "hub: torchvision's ImageNet-1k weights (network or torch "
                                                      "hub's cache); none: random initialisation; FILE: a local "
                                                      "torchvision state dict or .safetensors file (strict)",
                                metavar="{hub,none,FILE}")}

    def __init__(self, input_shape, width=None, args=None):
        super().__init__()
        if width is not None:
            raise UserError(f"{self.ARCH} has torchvision's fixed widths; width={width} applies to resnet32 only")
        from torchvision.models import resnet
        pretrained = getattr(args, "pretrained", None) or NONE
        net = getattr(resnet, self.ARCH)(weights="DEFAULT" if pretrained == HUB else None)
        if input_shape[0] != 3:
            if pretrained != NONE:
                raise UserError(f"--pretrained {pretrained}: {self.ARCH}'s weights take RGB images, the "
                                f"dataset gives {input_shape[0]} channel(s)")
            net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        if pretrained not in (HUB, NONE):  # the file's classifier is dropped: the run brings its own head
            load_strict(net, pretrained, dropped_prefixes=("fc.",))
        self.net = net

    @classmethod
    def preflight(cls, values: dict) -> None:
        """Called when the command line is resolved: refuse weights that cannot be had before data is read."""
        from torchvision.models import get_model_weights
        url = get_model_weights(cls.ARCH).DEFAULT.url
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        preflight(values["pretrained"], f"{cls.ARCH} ({os.path.basename(url)})", lambda: os.path.isfile(cached),
                  "download.pytorch.org")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_backbone("resnet18-imagenet")
class ResNet18ImageNet(TorchvisionResNet):
    """torchvision's ResNet-18 (7x7 stem and max-pool), unlike ``resnet18``, the CIFAR-style network."""
    ARCH = "resnet18"


@register_backbone("resnet50")
class ResNet50(TorchvisionResNet):
    ARCH = "resnet50"


@register_backbone("resnet152")
class ResNet152(TorchvisionResNet):
    ARCH = "resnet152"
