"""S-CUB-200: CUB-200-2011 with its official train/test split, 10 tasks of 20 classes."""
from __future__ import annotations

import os

from datasets import register_dataset
from datasets.utils import pretrained_protocol as protocol
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.image_folders import CUB, CUB_FILES, CUB_URL, cached_splits, cub_sources, ensure_folder
from utils.errors import DataError


@register_dataset("seq-cub200")
class SequentialCUB200(ContinualDataset):
    """Data from ``<data_path>/CUB_200_2011`` (the unpacked CUB_200_2011.tgz); class ``k`` is CUB's class
    ``k + 1``; decoded once into a validated uint8 cache (``datasets/utils/image_folders.py``)."""

    N_TASKS = 10
    N_CLASSES_PER_TASK = 20
    INPUT_SHAPE = protocol.INPUT_SHAPE
    BACKBONE = protocol.BACKBONE
    N_EPOCHS = 50
    BATCH_SIZE = 128
    TRANSFORM = protocol.CROP

    CANONICAL_SAMPLES = (5994, 5794)

    def source_paths(self) -> list:
        return [os.path.join(self.data_path, CUB)]

    def read_splits(self):
        folder = os.path.join(self.data_path, CUB)
        ensure_folder("CUB-200-2011", folder, CUB_FILES, CUB_URL, self.data_path, download=True)
        sources = cub_sources(self.data_path)
        if len(sources.wnids) != self.num_classes:
            raise DataError(f"{folder}/image_class_labels.txt names {len(sources.wnids)} classes; seq-cub200 "
                            f"needs {self.num_classes}")
        return cached_splits("CUB-200-2011", folder, sources, "official train_test_split.txt",
                             self.rebuild_cache)
