"""ResNet-18 for 32x32 / 64x64 inputs: architecture, features, and the speed flags on CPU."""
import pytest
import torch
from torch import nn

from backbone import get_backbone_class
from backbone.heads import FCHead, Network
from utils.errors import UserError


def build(name="resnet18", shape=(3, 32, 32)):
    torch.manual_seed(0)
    return get_backbone_class(name)(shape)


def test_parameter_count_matches_the_cifar_resnet18():
    # The widely used CIFAR ResNet-18 (3x3 stem, no max-pool, 64 base filters) with a 10-class
    # linear layer has 11,173,962 parameters; any change of layer, width or shortcut changes it.
    net = Network(build(), FCHead(512, 10))
    assert sum(p.numel() for p in net.parameters()) == 11_173_962


def test_stem_is_a_stride_one_3x3_convolution_without_max_pool():
    net = build()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1) and convs[0].out_channels == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 17  # stem + 8 blocks x 2


@pytest.mark.parametrize("side, last_side", [(32, 4), (64, 8)])
def test_features_are_512_non_negative_averages_of_the_last_stage(side, last_side):
    net = build(shape=(3, side, side)).eval()
    seen = {}
    net.stages.register_forward_hook(lambda m, i, out: seen.update(last=out))
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        h = net(x)
    assert net.feature_dim == 512 and h.shape == (3, 512)
    assert seen["last"].shape == (3, 512, last_side, last_side)
    assert (h >= 0).all() and (h > 0).any()
    torch.testing.assert_close(h, seen["last"].mean(dim=(2, 3)))


def test_narrow_variant_is_the_same_network_with_25_filters():
    narrow = build("resnet18-narrow", (3, 64, 64))
    assert narrow.feature_dim == 200  # still enough dimensions for FNO on seq-tinyimg (200 classes)
    assert type(narrow).__mro__[1] is get_backbone_class("resnet18")
    assert narrow(torch.randn(2, 3, 64, 64)).shape == (2, 200)


def test_rejects_non_image_inputs():
    with pytest.raises(UserError, match="input shape"):
        get_backbone_class("resnet18")((784,))


def test_channels_last_and_bf16_autocast_match_the_plain_forward_and_backward():
    net = build("resnet18-narrow").eval()
    x = torch.randn(4, 3, 32, 32)
    ref = net(x)
    fast = build("resnet18-narrow").eval().to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)
    fast.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x).float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())
