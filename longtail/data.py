"""Long-tailed benchmarks: CIFAR-10/100-LT (device-resident) and ImageNet-LT / Places-LT (split lists).

These are not continual benchmarks: they live in this package's own registry
(``LT_DATASETS``), read by ``main_lt.py``, and never appear in ``main.py``'s
``--dataset`` choices.  Their normalisation constants come from the table the
continual benchmarks share (``datasets.utils.normalisation``).

* ``cifar10-lt`` / ``cifar100-lt``: the CIFAR training set cut to the
  exponential profile n_c = floor(n_max * (1/rho)^(c/(K-1))) for class
  c = 0..K-1 (``--imbalance_ratio rho``: the ratio itself, 100 means the rarest
  class has 1/100 of the most frequent one).  The kept images of each class
  are drawn with a fixed seed (part of the benchmark, not of the run); the
  test set is CIFAR's balanced one.
* ``imagenet-lt`` / ``places-lt``: the standard split lists under
  ``--data_path`` (one "relative/path label" per line, paths relative to
  ``--data_path``); the images are decoded by DataLoader workers.

Each class also carries the authors' protocol (khyong/FNO-classifier,
``fno_lt/configs``): ``PRESET`` (what ``main_lt.py --load_best_args`` sets),
and the many / medium / few rank ranges of the paper's table.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from datasets.utils import normalisation
from datasets.utils.cifar_io import load_cifar
from datasets.utils.continual_dataset import Split
from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError, UserError
from utils.registry import UnknownNameError, registrar

LT_DATASETS: dict = {}
register_lt_dataset = registrar(LT_DATASETS, "long-tail dataset")

SUBSET_SEED = 0  # which images a CIFAR-LT class keeps is part of the benchmark, not of the run
MANY_SHOT_ABOVE = 100  # "counts" groups: many: more than 100 training images; few: fewer than 20; medium: the rest
FEW_SHOT_BELOW = 20
SHOT_GROUP_DEFINITIONS = ("paper", "counts")


def get_lt_dataset_class(name: str) -> type:
    if name not in LT_DATASETS:
        raise UnknownNameError(f"unknown long-tail dataset {name!r}; valid choices: {', '.join(sorted(LT_DATASETS))}")
    return LT_DATASETS[name]


def lt_dataset_names() -> list:
    return sorted(LT_DATASETS)


def check_imbalance_ratio(imbalance_ratio: float) -> None:
    if not imbalance_ratio >= 1:
        raise UserError(f"--imbalance_ratio must be >= 1 (the ratio of the largest to the smallest class, "
                        f"e.g. 100), got {imbalance_ratio}")


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> List[int]:
    """n_c = floor(n_max * (1/rho)^(c/(K-1))) for c = 0..K-1 (class 0 is the most frequent)."""
    check_imbalance_ratio(imbalance_ratio)
    if num_classes < 2:
        raise UserError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    return [int(n_max * (1.0 / imbalance_ratio) ** (c / (num_classes - 1))) for c in range(num_classes)]


def long_tail_subset(labels: np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """Sorted indices keeping ``counts[c]`` images of class c, drawn without replacement from ``seed``."""
    rng = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise DataError(f"class {c} has {len(idx)} training images, fewer than the {n} its profile needs")
        keep.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(keep))


def shot_groups(class_counts: Sequence[int], definition: str = "counts",
                rank_bounds: Optional[Tuple[int, int]] = None) -> dict:
    """Class indices (ascending) of the many-, medium- and few-shot groups.

    ``counts``: more than 100 / 20 to 100 / fewer than 20 training images.
    ``paper``: the authors' split - classes ranked by training count
    (descending, ties by class index), then ranks [0, r1), [r1, r2) and
    [r2, K) for ``rank_bounds`` = (r1, r2).
    """
    if definition == "counts":
        groups = {"many": [], "medium": [], "few": []}
        for c, n in enumerate(class_counts):
            groups["many" if n > MANY_SHOT_ABOVE else "few" if n < FEW_SHOT_BELOW else "medium"].append(c)
        return groups
    if definition != "paper":
        raise UserError(f"unknown --shot_groups {definition!r}; valid choices: {', '.join(SHOT_GROUP_DEFINITIONS)}")
    if rank_bounds is None:
        raise UserError("--shot_groups paper: the paper fixes no many/medium/few ranks for this dataset; "
                        "use --shot_groups counts")
    r1, r2 = rank_bounds
    ranked = sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))
    return {"many": sorted(ranked[:r1]), "medium": sorted(ranked[r1:r2]), "few": sorted(ranked[r2:])}


def describe_shot_groups(definition: str, rank_bounds: Optional[Tuple[int, int]], num_classes: int) -> str:
    """One sentence naming the group definition, for the results file."""
    if definition == "counts":
        return (f"counts: many = more than {MANY_SHOT_ABOVE} training images, medium = {FEW_SHOT_BELOW} to "
                f"{MANY_SHOT_ABOVE}, few = fewer than {FEW_SHOT_BELOW}")
    r1, r2 = rank_bounds
    return (f"paper: classes ranked by training count (descending, ties by class index); many = ranks [0, {r1}), "
            f"medium = [{r1}, {r2}), few = [{r2}, {num_classes}) (the authors' class_index ranges)")


class LongTailDataset:
    """A long-tailed benchmark: protocol defaults as class attributes, data from ``load``.

    ``RESIDENT`` sets hold uint8 tensors that the trainer moves to the device
    (``load_resident`` returns train and test ``Split``s); the others return
    torch ``Dataset``s of uint8 images from ``load_files``, decoded by
    DataLoader workers.  Either way ``TRANSFORM`` turns the uint8 batch into
    the network's input on the device (``train`` augments, ``test`` does not).
    """

    NAME: str = ""
    NUM_CLASSES: int = 0
    INPUT_SHAPE: Tuple[int, ...] = ()
    BACKBONE: str = ""
    BACKBONE_WIDTH: Optional[int] = None  # default --width when the default backbone is used
    SCHEDULE: str = "step"                # "step": x0.1 at the milestones; "cosine"
    RESIDENT: bool = True
    TAKES_IMBALANCE_RATIO: bool = False
    TRANSFORM: DeviceTransform = DeviceTransform(scale=255.0)
    SHOT_RANKS: Optional[Tuple[int, int]] = None  # the paper's many/medium/few rank boundaries (None: not fixed)
    DR_NORM_PENALTY: float = 0.0  # etf-dr: weight of mean |z| added to dot regression (the authors' reg_lam)
    PRESET: dict = {}             # --load_best_args: the authors' config for every arm
    PRESET_ARMS: dict = {}        # ... and per --method, on top of PRESET

    def __init__(self, data_path: str, imbalance_ratio: Optional[float] = None):
        if imbalance_ratio is not None and not self.TAKES_IMBALANCE_RATIO:
            raise UserError(f"--imbalance_ratio does not apply to {self.NAME}: its long-tailed profile is fixed "
                            f"by its split list (it applies to "
                            f"{', '.join(n for n, c in sorted(LT_DATASETS.items()) if c.TAKES_IMBALANCE_RATIO)})")
        self.data_path = data_path
        self.imbalance_ratio = imbalance_ratio

    def input_shape(self, image_size: int) -> Tuple[int, ...]:
        return self.INPUT_SHAPE


class CifarLongTail(LongTailDataset):
    CIFAR: str = ""
    INPUT_SHAPE = (3, 32, 32)
    BACKBONE = "resnet32"
    TAKES_IMBALANCE_RATIO = True
    DEFAULT_IMBALANCE_RATIO = 100.0
    TRANSFORM = DeviceTransform(255.0, *normalisation.CIFAR_LT, crop_padding=4, flip=True)
    # The authors' CIFAR-LT configs, every arm: these are main_lt.py's defaults too.
    PRESET = {"n_epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
              "schedule": "step", "warmup_epochs": 5, "lr_milestones": [160, 180], "lr_decay": 0.1,
              "mixup_alpha": 1.0, "amp": "none"}

    def __init__(self, data_path: str, imbalance_ratio: Optional[float] = None):
        super().__init__(data_path, imbalance_ratio)
        if self.imbalance_ratio is None:
            self.imbalance_ratio = self.DEFAULT_IMBALANCE_RATIO
        check_imbalance_ratio(self.imbalance_ratio)

    def load_resident(self) -> Tuple[Split, Split]:
        train, test = load_cifar(self.data_path, self.CIFAR)
        labels = train.y.numpy()
        # n_max is the size of the smallest class of the balanced set (5000 on the real one), so every
        # class can supply its share; this keeps the profile exact on reduced copies of CIFAR too.
        n_max = int(np.bincount(labels, minlength=self.NUM_CLASSES).min())
        counts = long_tail_counts(n_max, self.NUM_CLASSES, self.imbalance_ratio)
        keep = torch.from_numpy(long_tail_subset(labels, counts, SUBSET_SEED))
        return Split(train.x[keep], train.y[keep]), test


@register_lt_dataset("cifar10-lt")
class Cifar10LongTail(CifarLongTail):
    CIFAR = "cifar10"
    NUM_CLASSES = 10
    BACKBONE_WIDTH = 16  # ResNet-32 with 16 base channels: D = 64
    SHOT_RANKS = (3, 7)


@register_lt_dataset("cifar100-lt")
class Cifar100LongTail(CifarLongTail):
    CIFAR = "cifar100"
    NUM_CLASSES = 100
    BACKBONE_WIDTH = 32  # 32 base channels: D = 128 >= 100 classes, so that the FNO head fits
    SHOT_RANKS = (36, 71)


def read_split_list(path: str, num_classes: int) -> List[Tuple[str, int, int]]:
    """Parse a split list into (relative path, label, line number): one "relative/path label" per line.

    Blank lines are ignored; paths may contain spaces (the label is the last
    field).  Any other line is an error naming the file and the line number.
    """
    if not os.path.isfile(path):
        raise DataError(f"split list {path} is missing: put the standard list file there "
                        f"(one 'relative/path label' per line, paths relative to its folder)")
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.rsplit(maxsplit=1)
            if len(fields) != 2:
                raise DataError(f"{path}, line {number}: expected 'relative/path label', got {text!r}")
            rel, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise DataError(f"{path}, line {number}: label {label_text!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{path}, line {number}: label {label} is outside 0..{num_classes - 1}")
            if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
                raise DataError(f"{path}, line {number}: {rel[:80]!r} leaves the data folder (paths must be "
                                f"relative, without '..')")
            entries.append((rel, label, number))
    if not entries:
        raise DataError(f"split list {path} holds no entries")
    return entries


class ImageListDataset(torch.utils.data.Dataset):
    """Images named by a split list, decoded with PIL and returned as uint8 C x H x W tensors."""

    def __init__(self, root: str, list_path: str, entries: List[Tuple[str, int, int]], transform):
        self.root = root
        self.list_path = list_path
        self.entries = entries
        self.transform = transform
        self.targets = [label for _, label, _ in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        from PIL import Image
        rel, label, line = self.entries[index]
        path = os.path.join(self.root, rel)
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # a bomb is neither
            raise DataError(f"cannot read image {path} ({self.list_path}, line {line}): "
                            f"{type(exc).__name__}: {exc}") from None
        return self.transform(image), label


class ImageListLongTail(LongTailDataset):
    """ImageNet-LT / Places-LT style: ``<PREFIX>_train.txt`` and ``<PREFIX>_test.txt`` under --data_path."""

    LIST_PREFIX: str = ""
    RESIDENT = False
    INPUT_SHAPE = (3, 224, 224)
    SCHEDULE = "cosine"
    # Decoding, cropping and colour jitter in the workers; Places-LT too is normalised with ImageNet's
    # constants, as the authors' dataset code does (their Places config's own constants are not used).
    TRANSFORM = DeviceTransform(255.0, *normalisation.IMAGENET)
    DR_NORM_PENALTY = 0.01
    # The authors' ImageNet-LT / Places-LT configs: cosine to 0 over all epochs, no warm-up, fp16.
    PRESET = {"batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
              "warmup_epochs": 0, "mixup_alpha": 0.2, "color_jitter": 0.4, "amp": "fp16"}

    def input_shape(self, image_size: int) -> Tuple[int, ...]:
        return (3, image_size, image_size)

    def list_path(self, split: str) -> str:
        return os.path.join(self.data_path, f"{self.LIST_PREFIX}_{split}.txt")

    def load_files(self, image_size: int, color_jitter: float = 0.0):
        """(train Dataset, test Dataset, training-set class counts); images come out as uint8 tensors.

        ``color_jitter`` > 0 adds ColorJitter(brightness=contrast=saturation=color_jitter, hue=0) to training.
        """
        from torchvision import transforms as T
        jitter = [T.ColorJitter(color_jitter, color_jitter, color_jitter, 0)] if color_jitter > 0 else []
        train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *jitter, T.PILToTensor()])
        test_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.PILToTensor()])
        sets = []
        for split, tf in (("train", train_tf), ("test", test_tf)):
            path = self.list_path(split)
            entries = read_split_list(path, self.NUM_CLASSES)
            for rel, _, line in entries:
                if not os.path.isfile(os.path.join(self.data_path, rel)):
                    raise DataError(f"{path}, line {line}: image {os.path.join(self.data_path, rel)} does not exist")
            sets.append(ImageListDataset(self.data_path, path, entries, tf))
        counts = np.bincount(sets[0].targets, minlength=self.NUM_CLASSES).tolist()
        return sets[0], sets[1], counts


@register_lt_dataset("imagenet-lt")
class ImageNetLongTail(ImageListLongTail):
    LIST_PREFIX = "ImageNet_LT"
    NUM_CLASSES = 1000
    BACKBONE = "resnet50"
    SHOT_RANKS = (390, 835)
    PRESET = dict(ImageListLongTail.PRESET, backbone="resnet50", n_epochs=180)
    PRESET_ARMS = {"arc-mixup": {"mixup_alpha": 5.0}}


@register_lt_dataset("places-lt")
class PlacesLongTail(ImageListLongTail):
    LIST_PREFIX = "Places_LT"
    NUM_CLASSES = 365
    BACKBONE = "resnet152"
    SHOT_RANKS = (131, 288)
    PRESET = dict(ImageListLongTail.PRESET, backbone="resnet152", n_epochs=90)
