"""Reading CIFAR-10 / CIFAR-100 from torchvision's on-disk layout (python pickles), with checks."""
from __future__ import annotations

import os
import pickle
from typing import Tuple

import numpy as np
import torch

from datasets.utils import attempt_download, clip, describe_error, quote
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
    """Download with torchvision; return the reason in one line when that is not possible (the folders
    a failed attempt created are removed again when empty)."""
    def download():
        from torchvision import datasets as tvd
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        cls(root, train=True, download=True)

    return attempt_download(download, cifar_folder(root, name))


# Every global a CIFAR pickle may name: what numpy's array pickles reference (numpy 2.x names and the
# numpy 1.x names of the original files; ``_frombuffer`` for protocol 5, ``scalar`` for numpy scalars)
# and ``_codecs.encode`` (bytes in a protocol-2 pickle written by Python 3).  None of them runs code.
ALLOWED_GLOBALS = frozenset(
    [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    + [(f"{package}.multiarray", "_reconstruct") for package in ("numpy.core", "numpy._core")]
    + [(f"{package}.multiarray", "scalar") for package in ("numpy.core", "numpy._core")]
    + [(f"{package}.numeric", "_frombuffer") for package in ("numpy.core", "numpy._core")]
)


class CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays only: any other global (a
    function such as ``os.system``, a class) is refused before it is looked up, so nothing runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {clip(module + '.' + name)}, which no CIFAR file "
                                         f"does (refused, nothing was run)")
        return super().find_class(module, name)


def _unpickle(path: str):
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated, garbage, a refused global, ...: the pickle module raises many kinds
        raise DataError(f"{path} is not a readable CIFAR batch ({describe_error(exc)})") from None


def _integers(path: str, values, what: str, low: int, high: int, dtype) -> np.ndarray:
    """``values`` as ``dtype`` if every one is an integer in ``low..high``; else ``DataError`` quoting
    the first that is not (a cast would silently change it: 300.7 -> 44, 0.9 -> 0)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists, ...
        raise DataError(f"{path}: its {what}s are not an array of numbers ({describe_error(exc)})") from None
    rule = f"{what}s must be integers {low}..{high}"
    if array.dtype.kind not in "uif":
        raise DataError(f"{path} holds {what}s of type {array.dtype} ({rule})")
    if array.dtype.kind == "f":  # NaN fails every comparison, infinities the range
        ok = (array == np.round(array)) & (array >= low) & (array <= high)
    elif array.size and (array.min() < low or array.max() > high):
        ok = (array >= low) & (array <= high)
    else:
        ok = None  # integers within range: nothing to look for (the common, fast case)
    if ok is not None and not ok.all():
        raise DataError(f"{path} holds {what} {clip(str(array[~ok].flat[0]))} ({rule})")
    return array.astype(dtype, copy=False)


def check_shapes(path: str, data, labels) -> None:
    """``data`` is an N x 3072 array and ``labels`` a flat list or array of N, checked before either is
    converted: a pickle of shared references (one row repeated by reference) is tiny on disk and vast once
    converted."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} is corrupt: its 'data' is {quote(found)} (expected an N x 3072 array)")
    flat = isinstance(labels, np.ndarray) and labels.ndim == 1 or isinstance(labels, list) and not any(
        isinstance(v, (list, tuple, dict, np.ndarray)) for v in labels)
    if not flat or len(labels) != len(data):
        found = getattr(labels, "shape", None) or (len(labels) if isinstance(labels, list) else type(labels).__name__)
        raise DataError(f"{path} is corrupt: {len(data)} images but labels {quote(found)} (expected a flat list "
                        f"of {len(data)})")


def _read_batch(path: str, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        found = sorted(map(str, entry))[:10] if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"{path} is not a CIFAR batch: expected a dict with 'data' and {label_key!r}, "
                        f"found {quote(found)}")
    check_shapes(path, entry["data"], entry[label_key])
    data = _integers(path, entry["data"], "pixel value", 0, 255, np.uint8)
    labels = _integers(path, entry[label_key], "label", 0, num_classes - 1, np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(data) != len(labels):
        raise DataError(f"{path} is corrupt: data {quote(data.shape)}, labels {quote(labels.shape)} "
                        f"(expected N x 3072 and N labels)")
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
