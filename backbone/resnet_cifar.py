"""ResNet-32 for 32x32 inputs (He et al., 2016, section 4.2), the long-tail papers' CIFAR backbone.

Three stages of five basic blocks with ``width``, 2 ``width`` and 4 ``width``
channels; the shortcuts that change shape are parameter-free (stride-2
subsampling and zero-padded channels, the paper's option A).  Features are the
global average of the last block's post-ReLU output, so D = 4 * ``width``:
64 with the standard 16 base channels, 128 with ``width=32`` (CIFAR-100-LT with
an FNO head needs D >= 100).
"""
import torch
import torch.nn.functional as F
from torch import nn

from backbone import register_backbone
from utils.errors import UserError


class CifarBasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_backbone("resnet32")
class ResNet32(nn.Module):
    BLOCKS_PER_STAGE = 5  # depth 6 * 5 + 2 = 32

    def __init__(self, input_shape, width: int = 16):
        super().__init__()
        if width < 1:
            raise UserError(f"resnet32 width must be positive, got {width}")
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for b in range(self.BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(CifarBasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # N(0, 2 / fan_in), as the authors' resnet_cifar.py
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean((2, 3))
