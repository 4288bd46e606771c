"""S-CIFAR-100: CIFAR-100 (fine labels) in torchvision's layout, 10 tasks of 10 classes, ResNet-18."""
from __future__ import annotations

from datasets import register_dataset
from datasets.seq_cifar10 import SequentialCIFAR10
from datasets.utils import normalisation
from datasets.utils.transforms import DeviceTransform


@register_dataset("seq-cifar100")
class SequentialCIFAR100(SequentialCIFAR10):
    """Data from ``<data_path>/cifar-100-python``; the learning rate drops x0.1 after epochs 35 and 45.

    The milestones are fixed epochs of the 50-epoch protocol (as in the
    authors' code); a shorter ``--n_epochs`` never reaches them.
    """

    CIFAR_VARIANT = "cifar100"
    N_TASKS = 10
    N_CLASSES_PER_TASK = 10
    TRANSFORM = DeviceTransform(255.0, *normalisation.CIFAR100,
                                crop_padding=4, flip=True)
    LR_MILESTONES = (35, 45)
    LR_GAMMA = 0.1
    ASYMMETRIC_NOISE = None  # no class pairs defined here: --noise_type asym is refused
