"""Tiny copies of the 224-pixel benchmarks' folders, in their published layouts, for tests and smoke runs.

``python -m tests.fake_pretrained_data DIR`` writes all three into DIR.
"""
import os
import sys

import numpy as np
from PIL import Image

from datasets.utils.cifar_io import write_cifar


def _jpeg(path, rng, size=(24, 18)):
    """A small random JPEG (not square, so the loader's resize and centre crop are exercised)."""
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(path, quality=90)


def write_imagenet_r(root, n_classes=200, per_class=5, seed=0):
    """``imagenet-r/<wnid>/<i>.jpg`` with ``per_class`` images in each of ``n_classes`` class folders."""
    rng = np.random.RandomState(seed)
    wnids = [f"n{1440764 + 17 * k:08d}" for k in range(n_classes)]
    for wnid in wnids:
        folder = os.path.join(root, "imagenet-r", wnid)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            _jpeg(os.path.join(folder, f"art_{i}.jpg"), rng)
    return wnids


def write_cub(root, n_classes=200, per_class=2, seed=0):
    """``CUB_200_2011`` with images.txt, image_class_labels.txt and train_test_split.txt; in every class the
    first image is a training image and the others test images."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "CUB_200_2011")
    images, labels, split = [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        name = f"{c:03d}.Bird_{c}"
        os.makedirs(os.path.join(folder, "images", name), exist_ok=True)
        for i in range(per_class):
            image_id += 1
            rel = f"{name}/Bird_{c}_{i}.jpg"
            _jpeg(os.path.join(folder, "images", rel), rng)
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c}\n")
            split.append(f"{image_id} {1 if i == 0 else 0}\n")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        with open(os.path.join(folder, name), "w") as f:
            f.writelines(lines)
    return folder


def write_cifar100(root, train_per_class=2, test_per_class=1, seed=0):
    rng = np.random.RandomState(seed)
    y_train, y_test = np.repeat(np.arange(100), train_per_class), np.repeat(np.arange(100), test_per_class)
    x_train = rng.randint(0, 256, (len(y_train), 3, 32, 32)).astype(np.uint8)
    x_test = rng.randint(0, 256, (len(y_test), 3, 32, 32)).astype(np.uint8)
    write_cifar(str(root), "cifar100", (x_train, y_train), (x_test, y_test))


if __name__ == "__main__":
    write_imagenet_r(sys.argv[1])
    write_cub(sys.argv[1])
    write_cifar100(sys.argv[1])
