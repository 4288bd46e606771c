"""Write scikit-learn's real handwritten digits as MNIST files, for seq-mnist runs where MNIST itself is absent.

    python -m benchmarks.digits_mnist DIR      # then: main.py --dataset seq-mnist --data_path DIR ...

The 1,797 8x8 digits (values 0..16) are scaled to 0..255, bilinearly upsampled
to 20x20 and centred in 28x28 (MNIST's own layout: a 20x20 box in a 28x28
frame), split as seq-digits splits them (a fixed stratified 80/20), and
written in torchvision's layout (``DIR/MNIST/raw/``, IDX files).  Real
handwriting at MNIST's shape, but 1,437 training images instead of 60,000:
numbers from it measure differences between runs, never a reproduction of a
published seq-mnist figure.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from datasets.seq_digits import SPLIT_SEED, TEST_FRACTION
from datasets.utils.continual_dataset import stratified_split
from datasets.utils.idx import MNIST_FILES, write_idx


def digits_as_mnist(root: str) -> str:
    """Write the files under ``root``; returns the raw folder."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.zeros(len(small), 28, 28)
    images[:, 4:24, 4:24] = box[:, 0]
    images = images.round().clamp(0, 255).to(torch.uint8).numpy()
    labels = digits.target.astype(np.uint8)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for split, idx in zip(("train", "test"), stratified_split(digits.target, TEST_FRACTION, SPLIT_SEED)):
        write_idx(os.path.join(raw, MNIST_FILES[split][0]), images[idx])
        write_idx(os.path.join(raw, MNIST_FILES[split][1]), labels[idx])
    return raw


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write MNIST/raw/ into")
    print(digits_as_mnist(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
