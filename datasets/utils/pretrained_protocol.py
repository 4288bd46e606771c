"""What the 224-pixel benchmarks of pretrained-model continual learning share: inputs, transform, backbone.

The transform is the one the pretrained-model papers use (L2P, DualPrompt,
CODA-Prompt, SLCA, RanPAC): for training a random resized crop to 224 pixels
and a horizontal flip, for testing a resize to 256 and a 224-pixel centre crop
(a plain resize to 224 for CIFAR, whose stored images are 32 pixels), then
ImageNet's per-channel normalisation.  Everything runs on the device, batched
(``datasets/utils/transforms.py``).  timm's ViT weights were trained with mean
and std 0.5 instead; the papers' code differs here too, see docs/pretrained.md.
"""
from __future__ import annotations

from datasets.utils import normalisation
from datasets.utils.transforms import DeviceTransform

INPUT_SHAPE = (3, 224, 224)
BACKBONE = "vit_base_patch16_224.augreg_in21k"  # L2P, DualPrompt, SLCA and RanPAC start from it
CROP = DeviceTransform(255.0, *normalisation.IMAGENET, flip=True, size=224, test_crop=224 / 256)
RESIZE = DeviceTransform(255.0, *normalisation.IMAGENET, flip=True, size=224, test_crop=1.0)
