"""Reading ImageNet-R and CUB-200-2011 in their published layouts, through a validated uint8 cache.

Every image is decoded once, its shorter side resized to ``STORED_SIDE`` (256)
pixels and its central square kept, into ``uint8-cache-256.npz`` inside the
dataset's folder (30,000 ImageNet-R images: 5.9 GB; 11,788 CUB images:
2.3 GB).  The splits then stay on the run's device as uint8 and the device
transforms do the rest: for testing the central 224 pixels (torchvision's
``Resize(256)`` + ``CenterCrop(224)`` exactly), for training a random resized
crop of the stored square (the papers crop from the whole image; the stored
square loses the margins of non-square images).  The cache is validated as
TinyImageNet's (``datasets/utils/tinyimagenet.py``): a fingerprint of every
file's name, size, time and label, plus the split procedure; shapes; zip CRCs.

ImageNet-R (``imagenet-r/<wnid>/*.jpg``, 200 classes, 30,000 images) has no
official split.  The split is that of the PyTorch L2P / DualPrompt code
(JH-LEE-KR/l2p-pytorch, ``continual_datasets.py``, ``Imagenet_R``): the images
in ``ImageFolder`` order (sorted class folders, sorted file names), a random
permutation drawn by ``torch.randperm`` from a generator seeded with 42 (their
``--seed``), the first ``int(0.8 N)`` for training and the rest for testing,
not stratified by class.  Whether their run drew anything from the generator
before the split could not be checked here, so the split is theirs only if it
did not.

CUB-200-2011 (``CUB_200_2011/images.txt``, ``image_class_labels.txt``,
``train_test_split.txt``, ``images/``) uses its official split (5,994 training
and 5,794 test images); class ``k`` is the file's class ``k + 1``.
"""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Callable, List, Tuple

import numpy as np
import torch

from datasets.utils import attempt_download, describe_error, quote
from datasets.utils.continual_dataset import Split
from datasets.utils.tinyimagenet import Sources, is_plain_name, read_cache, read_lines, write_cache
from utils.errors import DataError

STORED_SIDE = 256
IMAGENET_R = "imagenet-r"
IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
IMAGENET_R_SEED = 42
IMAGENET_R_TRAIN_SHARE = 0.8
CUB = "CUB_200_2011"
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def decode_square(path: str, side: int = STORED_SIDE) -> np.ndarray:
    """One image as uint8 (3, side, side): the shorter side resized to ``side`` (bilinear, as torchvision's
    ``Resize``), the central square kept; grayscale and CMYK files are converted to RGB."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes fully: a truncated file fails here
            w, h = img.size
            scale = side / min(w, h)
            size = (max(side, round(w * scale)), max(side, round(h * scale)))
            img = img.resize(size, Image.BILINEAR)
            left, top = (size[0] - side) // 2, (size[1] - side) // 2
            pixels = np.asarray(img.crop((left, top, left + side, top + side)))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # a bomb is no OSError
        raise DataError(f"{path} is not a readable image ({describe_error(exc)})") from None
    return pixels.transpose(2, 0, 1)


def cached_splits(name: str, folder: str, sources: Sources, procedure: str, rebuild_cache: bool = False,
                  log: Callable[[str], None] | None = None) -> Tuple[Split, Split]:
    """The train and test splits of ``sources`` as uint8 N x 3 x 256 x 256, from the cache when it is valid
    (``procedure`` names how the split was made: part of the fingerprint), else decoded and cached."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    shape = (3, STORED_SIDE, STORED_SIDE)
    fingerprint = hashlib.sha256(f"{sources.fingerprint(folder)}\n{procedure}\n{shape}".encode()).hexdigest()
    cache = os.path.join(folder, f"uint8-cache-{STORED_SIDE}.npz")
    arrays, reason = (None, "rebuild_cache requested") if rebuild_cache else read_cache(cache, fingerprint,
                                                                                       sources, shape)
    if arrays is None:
        log(f"{name}: decoding {len(sources.train) + len(sources.test)} images into {cache} ({reason})")
        arrays = {}
        for split, files in (("train", sources.train), ("test", sources.test)):
            images = np.empty((len(files),) + shape, dtype=np.uint8)  # filled in place: no second copy
            for i, (path, _) in enumerate(files):
                images[i] = decode_square(path)
            arrays[f"{split}_x"], arrays[f"{split}_y"] = images, np.array([y for _, y in files], dtype=np.int64)
        try:
            write_cache(cache, fingerprint, arrays)
        except OSError as exc:  # read-only data folder: work from memory, decode again next time
            log(f"{name}: could not write the cache {cache} ({exc}); continuing without it")
    return tuple(Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"]))
                 for s in ("train", "test"))


def ensure_folder(name: str, folder: str, required: Tuple[str, ...], url: str, root: str, download: bool) -> None:
    """``DataError`` in one line when ``folder`` lacks one of ``required`` and downloading ``url`` into ``root``
    fails (the download needs a network; its archive unpacks into ``folder``)."""
    missing = lambda: [f for f in required if not os.path.exists(os.path.join(folder, f))]
    if not missing():
        return

    def fetch():
        from torchvision.datasets.utils import download_and_extract_archive
        download_and_extract_archive(url, root)

    problem = attempt_download(fetch, folder) if download else "download disabled"
    if missing():
        raise DataError(f"{name} files missing: {', '.join(missing()) or folder} must be in {folder} (unpack "
                        f"{url} into {root}) and downloading failed ({problem})")


def imagenet_r_sources(root: str, seed: int = IMAGENET_R_SEED) -> Sources:
    """ImageNet-R's class folders and the seeded 80/20 split (module docstring)."""
    folder = os.path.join(root, IMAGENET_R)
    wnids = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not wnids:
        raise DataError(f"{folder} holds no class folders (expected imagenet-r/<wnid>/*.jpg)")
    files = []
    for label, wnid in enumerate(wnids):
        directory = os.path.join(folder, wnid)
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DataError(f"{directory} holds no images")
        files += [(os.path.join(directory, n), label) for n in names]
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(IMAGENET_R_TRAIN_SHARE * len(files))
    return Sources(wnids, [files[i] for i in sorted(order[:n_train])], [files[i] for i in sorted(order[n_train:])])


def _numbered(path: str, width: int) -> List[List[str]]:
    """The non-empty lines of ``path`` split on spaces, each checked to hold ``width`` fields with an integer first."""
    rows = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != width or not fields[0].isdigit():
            raise DataError(f"{path} line {number}: expected {width} fields '<image id> ...', got {quote(line)}")
        rows.append(fields)
    return rows


def cub_sources(root: str) -> Sources:
    """CUB-200-2011's images with labels (0-based) and the official split, in image-id order."""
    folder = os.path.join(root, CUB)
    paths = {int(i): p for i, p in _numbered(os.path.join(folder, "images.txt"), 2)}
    labels_file = os.path.join(folder, "image_class_labels.txt")
    labels = {int(i): c for i, c in _numbered(labels_file, 2)}
    split = {int(i): s for i, s in _numbered(os.path.join(folder, "train_test_split.txt"), 2)}
    if not (set(paths) == set(labels) == set(split)):
        raise DataError(f"{folder}: images.txt, image_class_labels.txt and train_test_split.txt list different "
                        f"image ids ({len(paths)}, {len(labels)} and {len(split)} of them)")
    train, test, classes = [], [], set()
    for image_id in sorted(paths):
        rel, label, flag = paths[image_id], labels[image_id], split[image_id]
        if not label.isdigit() or int(label) < 1 or flag not in ("0", "1"):
            raise DataError(f"{folder}: image {image_id} has class {quote(label)} (expected 1..200) or split flag "
                            f"{quote(flag)} (expected 1 for training, 0 for test)")
        if not all(is_plain_name(part) for part in rel.split("/")):
            raise DataError(f"{folder}/images.txt: image {image_id} has path {quote(rel)}, outside images/")
        path = os.path.join(folder, "images", rel)
        if not os.path.isfile(path):
            raise DataError(f"{folder}/images.txt names {quote(path)}, which does not exist")
        (train if flag == "1" else test).append((path, int(label) - 1))
        classes.add(int(label))
    return Sources([str(c) for c in sorted(classes)], train, test)
