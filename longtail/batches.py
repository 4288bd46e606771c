"""How a long-tailed benchmark's images reach the device, batch by batch, for training and for evaluation.

CIFAR-LT lives on the device as uint8 tensors: a batch is an index gather,
augmented there (``ResidentBatches``, ``ResidentTestBatches``).  ImageNet-LT
and Places-LT are decoded by DataLoader workers and normalised on the device
(``LoaderBatches``).  Each training source names its random streams
(``generators``), which a checkpoint saves and restores.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from datasets.utils.continual_dataset import Split
from datasets.utils.transforms import DeviceTransform
from longtail.data import LongTailDataset
from longtail.processes import Processes
from utils.errors import DataError, UserError
from utils.seeding import derive_seed, make_generator

EVAL_BATCH = 512


class ResidentBatches:
    """Batches gathered from uint8 tensors on the device, augmented there.

    Each epoch one permutation of the whole set is drawn from the data-order
    stream (identical on every process); every global batch of ``batch_size``
    is cut into ``world`` contiguous shares, one per process.  Under DDP a final
    batch smaller than the number of processes is dropped; in one process a final
    batch of one sample joins the batch before it (as in ``main.py``).
    """

    def __init__(self, split: Split, transform: DeviceTransform, batch_size: int, procs: Processes,
                 order_generator: torch.Generator, augment_generator: torch.Generator):
        self.split, self.transform, self.batch_size, self.procs = split, transform, batch_size, procs
        self.order_generator, self.augment_generator = order_generator, augment_generator

    def __len__(self) -> int:
        n, b, w = len(self.split.y), self.batch_size, self.procs.world
        return n // b + (1 if n % b >= w else 0) if w > 1 else math.ceil(n / b) - (n > b and n % b == 1)

    def generators(self) -> dict:
        return {"data_order": self.order_generator, "augmentation": self.augment_generator}

    def epoch(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.split.x, self.split.y
        order = torch.randperm(len(y), device=y.device, generator=self.order_generator)
        batches = list(order.split(self.batch_size))
        if not self.procs.distributed and len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [torch.cat(batches[-2:])]  # batch norm cannot train on one sample: it joins the previous
        for batch in batches:
            if self.procs.distributed:
                if len(batch) < self.procs.world:
                    break
                batch = batch.tensor_split(self.procs.world)[self.procs.rank]
            yield self.transform.train(x[batch], self.augment_generator), y[batch]


class LoaderBatches:
    """Batches decoded by DataLoader workers (uint8), moved to the device and normalised there.

    The loader's generator orders the data and seeds the workers' augmentation;
    a checkpoint restores it, which makes a resumed run exact with
    ``--workers 0`` (persistent workers keep drawing from their own streams,
    which no checkpoint can reach).
    """

    def __init__(self, dataset, transform: DeviceTransform, batch_size: int, procs: Processes,
                 device: torch.device, workers: int, seed: int, train: bool):
        self.transform, self.device, self.sampler = transform, device, None
        if train and procs.distributed:
            self.sampler = DistributedSampler(dataset, procs.world, procs.rank, shuffle=True,
                                              seed=derive_seed(seed, "data-order") % 2**31)
        elif not train:
            dataset = Subset(dataset, range(procs.rank, len(dataset), procs.world))
        self.loader = DataLoader(dataset, batch_size=batch_size // procs.world if train else batch_size,
                                 shuffle=train and self.sampler is None, sampler=self.sampler,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0,
                                 generator=make_generator(seed, f"loader/rank{procs.rank}"))

    def __len__(self) -> int:
        return len(self.loader)

    def generators(self) -> dict:
        return {"loader": self.loader.generator}

    def epoch(self, epoch: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        try:
            for x, y in self.loader:
                yield (self.transform.test(x.to(self.device, non_blocking=True)),
                       y.to(self.device, non_blocking=True))
        except DataError as exc:  # re-raised from a worker with its traceback: keep the message line
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.split(f"{DataError.__name__}: ", 1)[-1]) from None


class ResidentTestBatches:
    """This process's share (every ``world``-th image) of a device-resident test split, unaugmented."""

    def __init__(self, split: Split, transform: DeviceTransform, procs: Processes):
        self.x, self.y = split.x[procs.rank::procs.world], split.y[procs.rank::procs.world]
        self.transform = transform

    def epoch(self, epoch: int = 0):
        for start in range(0, len(self.y), EVAL_BATCH):
            yield self.transform.test(self.x[start:start + EVAL_BATCH]), self.y[start:start + EVAL_BATCH]


@dataclass
class LongTailData:
    train: object            # .epoch(e) yields (input, label) batches; len() = steps per epoch; .generators()
    test: object             # .epoch() yields this process's test batches
    class_counts: List[int]  # training images per class (defines many / medium / few)
    num_test: int            # size of the whole test set


def check_counts(args, counts: List[int], warn: bool = True) -> List[int]:
    """An empty training set is refused here, not left to show up as a NaN loss blamed on the learning rate;
    with ``warn`` (the first process of a set cut by --imbalance_ratio) classes left without a training image
    get one warning line."""
    empty = [c for c, n in enumerate(counts) if n == 0]
    if len(empty) == len(counts):
        raise DataError(f"{args.dataset}: the training set is empty; check --data_path and the split files")
    if empty and warn:
        ratio = f" (--imbalance_ratio {args.imbalance_ratio:g})" if getattr(args, "imbalance_ratio", None) else ""
        print(f"warning: {len(empty)} of the {len(counts)} classes have no training image{ratio}: "
              f"{', '.join(map(str, empty[:10]))}{', ...' if len(empty) > 10 else ''}", file=sys.stderr, flush=True)
    return counts


def load_data(dataset: LongTailDataset, args, procs: Processes, device: torch.device) -> LongTailData:
    transform = dataset.TRANSFORM.to(device)  # constants on the device once, not one host copy per batch
    if dataset.RESIDENT:
        if args.color_jitter:
            raise UserError(f"--color_jitter applies to the decoded-image sets (imagenet-lt, places-lt), "
                            f"not to {args.dataset}")
        train, test = dataset.load_resident()
        train, test = train.to(device), test.to(device)
        counts = check_counts(args, torch.bincount(train.y, minlength=dataset.NUM_CLASSES).tolist(), procs.rank == 0)
        batches = ResidentBatches(train, transform, args.batch_size, procs,
                                  make_generator(args.seed, "data-order", device),
                                  make_generator(args.seed, f"augmentation/rank{procs.rank}", device))
        return LongTailData(batches, ResidentTestBatches(test, transform, procs), counts, len(test.y))
    train, test, counts = dataset.load_files(args.image_size, args.color_jitter)
    check_counts(args, counts, warn=False)  # the split lists name the classes they hold
    common = dict(transform=transform, procs=procs, device=device, workers=args.workers, seed=args.seed)
    return LongTailData(LoaderBatches(train, batch_size=args.batch_size, train=True, **common),
                        LoaderBatches(test, batch_size=EVAL_BATCH, train=False, **common), counts, len(test))
