"""S-TinyImageNet: the ``tiny-imagenet-200`` folder, 10 tasks of 20 classes, ResNet-18 on 64x64 inputs."""
from __future__ import annotations

from datasets import register_dataset
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.tinyimagenet import load_tinyimagenet, tinyimagenet_folder
from datasets.utils import normalisation
from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError


@register_dataset("seq-tinyimg")
class SequentialTinyImageNet(ContinualDataset):
    """Train split: the 500 training images per class; test split: the 50 labelled validation images.

    Classes are numbered in sorted wnid order, so task ``t`` holds the sorted
    classes ``20t .. 20t+19``.  Augmentation: random crop (zero padding 4),
    horizontal flip, per-channel normalisation.  ``rebuild_cache=True`` decodes every JPEG again
    and rewrites the cache (see ``datasets/utils/tinyimagenet.py``).
    """

    N_TASKS = 10
    N_CLASSES_PER_TASK = 20
    INPUT_SHAPE = (3, 64, 64)
    BACKBONE = "resnet18"
    N_EPOCHS = 100
    BATCH_SIZE = 32
    TRANSFORM = DeviceTransform(255.0, *normalisation.TINY_IMAGENET,
                                crop_padding=4, flip=True)

    CANONICAL_SAMPLES = (100000, 10000)

    def source_paths(self) -> list:
        return [tinyimagenet_folder(self.data_path)]

    def read_splits(self):
        train, test, wnids = load_tinyimagenet(self.data_path, rebuild_cache=self.rebuild_cache)
        if len(wnids) != self.num_classes:
            raise DataError(f"{tinyimagenet_folder(self.data_path)}/wnids.txt lists {len(wnids)} classes; "
                            f"seq-tinyimg needs {self.num_classes}")
        return train, test
