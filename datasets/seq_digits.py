"""S-Digits: scikit-learn's real 8x8 handwritten digits, 5 tasks of 2 classes, no download needed."""
from __future__ import annotations

import numpy as np
import torch

from datasets import register_dataset
from datasets.utils.continual_dataset import ContinualDataset, Split, stratified_split
from datasets.utils.transforms import DeviceTransform

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is part of the benchmark, not of the run


@register_dataset("seq-digits")
class SequentialDigits(ContinualDataset):
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    INPUT_SHAPE = (1, 8, 8)
    BACKBONE = "mlp"
    N_EPOCHS = 5
    BATCH_SIZE = 10
    CPU_THREADS = 1  # an MLP at batch 10 is too small for intra-op threads to pay off (measured: ~1.6x faster)
    TRANSFORM = DeviceTransform(scale=16.0)  # pixel values are 0..16
    EMBEDDED = True  # scikit-learn's copy of the UCI digits
    CANONICAL_SAMPLES = (1438, 359)  # 1,797 digits, a stratified 20% held out

    def read_splits(self):
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = digits.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8), values 0..16
        labels = digits.target.astype(np.int64)
        train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
        as_split = lambda idx: Split(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))
        return as_split(train), as_split(test)
