"""ResNet-50 and ResNet-152 exactly as torchvision defines them, as feature extractors.

The classification layer is removed: features are the global average of the
last stage's post-ReLU output (D = 2048).  torchvision is imported when a
network is built, not when the backbone registry is discovered.
The torchvision network keeps torchvision's parameter names under ``.net``,
so a torchvision state-dict file loads into ``.net`` as it is
(``main_lt.py --pretrained``).
"""
import torch
from torch import nn

from backbone import register_backbone
from utils.errors import UserError


class TorchvisionResNet(nn.Module):
    ARCH = ""

    def __init__(self, input_shape, width=None):
        super().__init__()
        if width is not None:
            raise UserError(f"{self.ARCH} has torchvision's fixed widths; width={width} applies to resnet32 only")
        from torchvision.models import resnet
        net = getattr(resnet, self.ARCH)(weights=None)
        if input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_backbone("resnet50")
class ResNet50(TorchvisionResNet):
    ARCH = "resnet50"


@register_backbone("resnet152")
class ResNet152(TorchvisionResNet):
    ARCH = "resnet152"
