"""S-CIFAR-100 at 224 pixels for pretrained models: CIFAR-100's python files, 10 tasks of 10 classes.

The 32-pixel images stay on the device as uint8 (150 MB) and are resized to
224 pixels there, per batch (``datasets/utils/pretrained_protocol.py``).
"""
from __future__ import annotations

from datasets import register_dataset
from datasets.seq_cifar100 import SequentialCIFAR100
from datasets.utils import pretrained_protocol as protocol


@register_dataset("seq-cifar100-224")
class SequentialCIFAR100224(SequentialCIFAR100):
    """Data from ``<data_path>/cifar-100-python`` as ``seq-cifar100``; ViT-B/16 by default, constant lr."""

    INPUT_SHAPE = protocol.INPUT_SHAPE
    BACKBONE = protocol.BACKBONE
    N_EPOCHS = 20
    BATCH_SIZE = 128
    TRANSFORM = protocol.RESIZE
    LR_MILESTONES = ()
