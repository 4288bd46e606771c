"""S-ImageNet-R: ImageNet-R's 200 class folders, the seeded 80/20 split of the L2P code, 10 tasks of 20 classes."""
from __future__ import annotations

import os

from datasets import register_dataset
from datasets.utils import pretrained_protocol as protocol
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.image_folders import (IMAGENET_R, IMAGENET_R_SEED, IMAGENET_R_TRAIN_SHARE, IMAGENET_R_URL,
                                          cached_splits, ensure_folder, imagenet_r_sources)
from utils.errors import DataError


@register_dataset("seq-imagenet-r")
class SequentialImageNetR(ContinualDataset):
    """Data from ``<data_path>/imagenet-r/<wnid>/*.jpg`` (the unpacked imagenet-r.tar); classes in sorted
    wnid order; decoded once into a validated uint8 cache (``datasets/utils/image_folders.py``)."""

    N_TASKS = 10
    N_CLASSES_PER_TASK = 20
    INPUT_SHAPE = protocol.INPUT_SHAPE
    BACKBONE = protocol.BACKBONE
    N_EPOCHS = 50
    BATCH_SIZE = 128
    TRANSFORM = protocol.CROP

    def source_paths(self) -> list:  # no canonical sizes: the 80/20 split is drawn per class
        return [os.path.join(self.data_path, IMAGENET_R)]

    def read_splits(self):
        folder = os.path.join(self.data_path, IMAGENET_R)
        ensure_folder("ImageNet-R", folder, ("",), IMAGENET_R_URL, self.data_path, download=True)
        sources = imagenet_r_sources(self.data_path)
        if len(sources.wnids) != self.num_classes:
            raise DataError(f"{folder} holds {len(sources.wnids)} class folders; seq-imagenet-r needs "
                            f"{self.num_classes}")
        procedure = f"torch.randperm seed {IMAGENET_R_SEED}, first {IMAGENET_R_TRAIN_SHARE} for training"
        return cached_splits("ImageNet-R", folder, sources, procedure, self.rebuild_cache)
