"""S-CIFAR-10: CIFAR-10 in torchvision's on-disk layout, 5 tasks of 2 classes, ResNet-18."""
from __future__ import annotations

from datasets import register_dataset
from datasets.utils.cifar_io import cifar_folder, load_cifar
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.streams import CIFAR10_ASYMMETRIC
from datasets.utils import normalisation
from datasets.utils.transforms import DeviceTransform


@register_dataset("seq-cifar10")
class SequentialCIFAR10(ContinualDataset):
    """Random crop (zero padding 4) and horizontal flip, then per-channel normalisation.

    Data are read from ``<data_path>/cifar-10-batches-py`` (downloaded there by
    torchvision when missing and a network is available).  Subclasses change
    only the constants and ``CIFAR_VARIANT``.
    """

    CIFAR_VARIANT = "cifar10"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    INPUT_SHAPE = (3, 32, 32)
    BACKBONE = "resnet18"
    N_EPOCHS = 50
    BATCH_SIZE = 32
    TRANSFORM = DeviceTransform(255.0, *normalisation.CIFAR10,
                                crop_padding=4, flip=True)
    ASYMMETRIC_NOISE = CIFAR10_ASYMMETRIC  # Patrini et al.'s pairs (datasets/utils/streams.py)

    CANONICAL_SAMPLES = (50000, 10000)  # CIFAR-100 too

    def source_paths(self) -> list:
        return [cifar_folder(self.data_path, self.CIFAR_VARIANT)]

    def read_splits(self):
        return load_cifar(self.data_path, self.CIFAR_VARIANT)
