"""ResNet-18 for small images (32x32 CIFAR, 64x64 TinyImageNet), as in the CL literature.

Unlike the ImageNet ResNet-18 the stem is a single 3x3 convolution with
stride 1 and there is no max-pool, so a 32x32 input keeps its resolution in
the first stage (32 -> 32 -> 16 -> 8 -> 4; 64x64 inputs end at 8x8).  The
features are the global average of the last stage's post-ReLU activations:
non-negative, ``8 * nf`` of them (512 with the standard ``nf = 64``).
"""
from __future__ import annotations

import torch
from torch import nn

from backbone import register_backbone
from utils.errors import UserError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1-projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In place: batch norm's backward does not need its output, which saves one activation.
        out += self.shortcut(x)
        return self.relu(out)


@register_backbone("resnet18")
class ResNet18(nn.Module):
    """ResNet-18 with a 3x3 stem and no max-pool; ``nf`` base filters give ``8 * nf`` features.

    ``nf = 64`` is the benchmark network (D = 512).  A smaller ``nf`` is only
    for fast tests and smoke runs (see ``resnet18-narrow``).
    """

    def __init__(self, input_shape, nf: int = 64):
        super().__init__()
        if len(input_shape) != 3:
            raise UserError(f"resnet18 needs image inputs (channels, height, width); got input shape "
                            f"{tuple(input_shape)}")
        channels = input_shape[0]
        self.feature_dim = 8 * nf
        self.stem = nn.Sequential(conv3x3(channels, nf), nn.BatchNorm2d(nf), nn.ReLU(inplace=True))
        stages, in_planes = [], nf
        for i, planes in enumerate((nf, 2 * nf, 4 * nf, 8 * nf)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.pool(out).flatten(1)


@register_backbone("resnet18-narrow")
class NarrowResNet18(ResNet18):
    """The same network with 25 base filters: the narrowest whose D = 200 still lets FNO serve the
    200 classes of seq-tinyimg (one dimension each).

    About 6.5x cheaper than ``resnet18``: meant for tests and quick smoke runs
    on a CPU, never for reported results.
    """

    def __init__(self, input_shape, nf: int = 25):
        super().__init__(input_shape, nf=nf)


@register_backbone("resnet18-reduced")
class ReducedResNet18(ResNet18):
    """The reduced ResNet-18 of the online continual-learning literature: 20 base filters, D = 160
    (Lopez-Paz & Ranzato's GEM, used by ER-ACE and Mammoth's ``reduced-resnet18``).  A benchmark network of
    the online setting (docs/online.md), unlike ``resnet18-narrow``."""

    def __init__(self, input_shape, nf: int = 20):
        super().__init__(input_shape, nf=nf)
