"""S-MNIST: MNIST in torchvision's on-disk layout, 5 tasks of 2 classes."""
from __future__ import annotations

import os

import numpy as np
import torch

from datasets import register_dataset
from datasets.utils import attempt_download
from datasets.utils.continual_dataset import ContinualDataset, Split
from datasets.utils.idx import MNIST_FILES, find_file, read_idx
from utils.errors import DataError

# Where torchvision downloads MNIST from (torchvision.datasets.MNIST.mirrors), for a download by hand.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def try_download_mnist(root: str) -> str | None:
    """Download MNIST with torchvision into ``root``/MNIST/raw; return the reason in one line if that fails
    (the folders a failed attempt created are removed again when empty)."""
    def download():
        from torchvision.datasets import MNIST
        MNIST(root, train=True, download=True)
        MNIST(root, train=False, download=True)

    return attempt_download(download, os.path.join(root, "MNIST", "raw"))


def load_mnist_split(raw_dir: str, images_stem: str, labels_stem: str) -> Split:
    images = read_idx(find_file(raw_dir, images_stem))
    labels = read_idx(find_file(raw_dir, labels_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DataError(f"{raw_dir}/{images_stem}: expected N x 28 x 28 images and N labels, "
                        f"got {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{raw_dir}: {images_stem} has {len(images)} images but {labels_stem} "
                        f"has {len(labels)} labels")
    if labels.max(initial=0) > 9:
        raise DataError(f"{raw_dir}/{labels_stem} holds label {labels.max()} outside 0..9")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


@register_dataset("seq-mnist")
class SequentialMNIST(ContinualDataset):
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    INPUT_SHAPE = (1, 28, 28)
    BACKBONE = "mlp"
    N_EPOCHS = 1
    BATCH_SIZE = 10
    CPU_THREADS = 1  # an MLP at batch 10 is too small for intra-op threads to pay off (measured: ~1.6x faster)

    CANONICAL_SAMPLES = (60000, 10000)

    def source_paths(self) -> list:
        return [self.raw_dir()]

    def raw_dir(self) -> str:
        return os.path.join(self.data_path, "MNIST", "raw")

    def missing_files(self) -> list:
        stems = [s for pair in MNIST_FILES.values() for s in pair]
        return [s for s in stems if find_file(self.raw_dir(), s) is None]

    def read_splits(self):
        if self.missing_files():
            problem = try_download_mnist(self.data_path)
            missing = self.missing_files()
            if missing:
                raise DataError(f"MNIST files missing in {self.raw_dir()}: {', '.join(missing)}; download failed "
                                f"({problem}); fetch the .gz files by hand from {' or '.join(MNIST_MIRRORS)}")
        return tuple(load_mnist_split(self.raw_dir(), *MNIST_FILES[s]) for s in ("train", "test"))
