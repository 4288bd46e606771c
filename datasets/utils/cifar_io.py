"""Reading CIFAR-10 / CIFAR-100 from torchvision's on-disk layout (python pickles), with checks."""
from __future__ import annotations

import os
import pickle
from typing import Tuple

import numpy as np
import torch

from datasets.utils.continual_dataset import Split
from utils.errors import DataError

LAYOUTS = {
    # name: (folder, train files, test files, label key, number of classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def cifar_folder(root: str, name: str) -> str:
    return os.path.join(root, LAYOUTS[name][0])


def missing_cifar_files(root: str, name: str) -> list:
    folder, train, test, _, _ = LAYOUTS[name]
    return [f for f in train + test if not os.path.isfile(os.path.join(root, folder, f))]


def try_download_cifar(root: str, name: str) -> str | None:
    """Download with torchvision; return the error text when that is not possible."""
    try:
        from torchvision import datasets as tvd
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        cls(root, train=True, download=True)
    except Exception as exc:  # no network, mirror down, no permission...
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _read_batch(path: str, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path} is corrupt: data {data.shape}, {len(labels)} labels "
                        f"(expected N x 3072 and N labels)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path} holds labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: str, name: str, download: bool = True) -> Tuple[Split, Split]:
    """Train and test splits (uint8 N x 3 x 32 x 32, int64 labels) of ``cifar10`` or ``cifar100``."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown CIFAR variant {name!r}; valid choices: {', '.join(LAYOUTS)}")
    folder, train_files, test_files, label_key, num_classes = LAYOUTS[name]
    if missing_cifar_files(root, name):
        problem = try_download_cifar(root, name) if download else "download disabled"
        missing = missing_cifar_files(root, name)
        if missing:
            raise DataError(f"{name} files missing: {', '.join(missing)} must be in "
                            f"{os.path.join(root, folder)} and downloading failed ({problem})")

    def read(files):
        parts = [_read_batch(os.path.join(root, folder, f), label_key, num_classes) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    return read(train_files), read(test_files)


def write_cifar(root: str, name: str, train: Tuple[np.ndarray, np.ndarray],
                test: Tuple[np.ndarray, np.ndarray]) -> None:
    """Write (images N x 3 x 32 x 32 uint8, labels) in torchvision's exact layout; used by tests and benchmarks."""
    folder, train_files, test_files, label_key, _ = LAYOUTS[name]
    os.makedirs(os.path.join(root, folder), exist_ok=True)

    def dump(path, x, y):
        with open(path, "wb") as f:
            pickle.dump({"data": np.ascontiguousarray(x).reshape(len(x), -1), label_key: list(map(int, y)),
                         "batch_label": os.path.basename(path)}, f)

    chunks = np.array_split(np.arange(len(train[0])), len(train_files))
    for fname, idx in zip(train_files, chunks):
        dump(os.path.join(root, folder, fname), train[0][idx], train[1][idx])
    dump(os.path.join(root, folder, test_files[0]), *test)
