"""The long-tailed training loop: four arms, one trainer, single-process or DistributedDataParallel.

An arm (``--method``) is a head plus a training loss; everything else - data,
schedule, evaluation, many/medium/few metrics - is shared, so the arms differ
in exactly what the comparison is about.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains a
DistributedDataParallel replica on its share of each global batch
(``--batch_size`` is the global batch), gloo on the CPU and NCCL on CUDA, and
evaluation sums per-class hits over the processes.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from backbone import get_backbone_class
from backbone.heads import FCHead, Network, fno_matrix
from datasets.long_tail import LongTailDataset, get_lt_dataset_class, shot_groups
from datasets.utils.continual_dataset import Split
from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError, UserError
from utils.lt_losses import (arc_mixup_batch, arc_mixup_loss, dot_regression_loss, draw_lambda,
                             mixup_batch, mixup_cross_entropy, simplex_etf)
from utils.progress import ProgressBar
from utils.registry import registrar
from utils.seeding import derive_seed, make_generator, seed_everything

LT_METHODS: dict = {}
register_lt_method = registrar(LT_METHODS, "long-tail method")
EVAL_BATCH = 512


# ----------------------------------------------------------------------------- heads

class FixedLinearHead(nn.Module):
    """logits = h W^T with W (K x D) a fixed buffer: no scale, no bias."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h.float(), self.weight)


class ETFHead(FixedLinearHead):
    """Yang et al.'s fixed ETF classifier: feature batch-norm, L2 normalisation, then cosines to the prototypes."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)
        self.bn = nn.BatchNorm1d(weight.shape[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(self.bn(h.float()), dim=1))


# ----------------------------------------------------------------------------- arms

class LongTailMethod:
    """An arm: ``make_head`` and the training ``loss`` of one batch.

    Mixing draws come from this process's own streams (``mixing/rank<r>``), so
    they are reproducible and do not disturb data order or augmentation.
    """

    def __init__(self, args, num_classes: int, device: torch.device, rank: int = 0):
        self.args = args
        self.num_classes = num_classes
        self.generator = make_generator(args.seed, f"mixing/rank{rank}", device)
        self.lambda_rng = np.random.default_rng(derive_seed(args.seed, f"mixing-lambda/rank{rank}"))

    def make_head(self, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, net: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``net`` is the (possibly DDP-wrapped) network to call, ``head`` its head module."""
        raise NotImplementedError


@register_lt_method("ce")
class CrossEntropy(LongTailMethod):
    """Learnable FC head, plain cross-entropy."""

    def make_head(self, feature_dim):
        return FCHead(feature_dim, self.num_classes)

    def loss(self, net, head, x, y):
        return F.cross_entropy(net(x).float(), y)


@register_lt_method("mixup")
class Mixup(LongTailMethod):
    """Learnable FC head, standard mixup: lambda ~ Beta(alpha, alpha) per batch, random partner."""

    def make_head(self, feature_dim):
        return FCHead(feature_dim, self.num_classes)

    def loss(self, net, head, x, y):
        lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
        x_mix, y_partner = mixup_batch(x, y, lam, self.generator)
        return mixup_cross_entropy(net(x_mix), y, y_partner, lam)


@register_lt_method("etf-dr")
class ETFDotRegression(LongTailMethod):
    """Fixed simplex-ETF head on batch-normalised, L2-normalised features, dot-regression loss."""

    def make_head(self, feature_dim):
        return ETFHead(simplex_etf(self.num_classes, feature_dim, make_generator(self.args.seed, "etf")))

    def loss(self, net, head, x, y):
        return dot_regression_loss(net(x), y)


@register_lt_method("arc-mixup")
class ArcMixup(LongTailMethod):
    """Fixed FNO head (no scale) with arc-mixup and the -log(q_hat . h_hat) loss (DESIGN.md section 2)."""

    def make_head(self, feature_dim):
        generator = make_generator(self.args.seed, "fno-partition")  # the CL side's stream for the same matrix
        return FixedLinearHead(fno_matrix(self.num_classes, feature_dim, generator))

    def loss(self, net, head, x, y):
        lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
        batch = arc_mixup_batch(x, y, head.weight, lam, self.generator)
        _, h = net(batch.x, return_features=True)
        return arc_mixup_loss(h, batch.q, batch.feature_mask)


def lt_method_names() -> list:
    return sorted(LT_METHODS)


# ----------------------------------------------------------------------------- processes

@dataclass
class Processes:
    """This process's place in a torchrun job (rank 0 of 1 without a launcher)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device_name: Optional[str]) -> Tuple[Processes, torch.device]:
    """Read torchrun's environment, pick this process's device and join the process group."""
    from utils.cli import resolve_device
    procs = Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    try:
        device = resolve_device(device_name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if procs.distributed and device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {device_name}: under torchrun each process uses cuda:LOCAL_RANK; "
                            f"give --device cuda")
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if procs.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


def stop_processes(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- data

class ResidentBatches:
    """Batches gathered from uint8 tensors on the device, augmented there.

    Each epoch one permutation of the whole set is drawn from the data-order
    stream (identical on every process); every global batch of ``batch_size``
    is cut into ``world`` contiguous shares, one per process.  Under DDP a final
    batch smaller than the number of processes is dropped.
    """

    def __init__(self, split: Split, transform: DeviceTransform, batch_size: int, procs: Processes,
                 order_generator: torch.Generator, augment_generator: torch.Generator):
        self.split, self.transform, self.batch_size, self.procs = split, transform, batch_size, procs
        self.order_generator, self.augment_generator = order_generator, augment_generator

    def __len__(self) -> int:
        n, b, w = len(self.split.y), self.batch_size, self.procs.world
        return n // b + (1 if n % b >= w else 0) if w > 1 else math.ceil(n / b)

    def epoch(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.split.x, self.split.y
        order = torch.randperm(len(y), device=y.device, generator=self.order_generator)
        for batch in order.split(self.batch_size):
            if self.procs.distributed:
                if len(batch) < self.procs.world:
                    break
                batch = batch.tensor_split(self.procs.world)[self.procs.rank]
            yield self.transform.train(x[batch], self.augment_generator), y[batch]


class LoaderBatches:
    """Batches decoded by DataLoader workers (uint8), moved to the device and normalised there."""

    def __init__(self, dataset, transform: DeviceTransform, batch_size: int, procs: Processes,
                 device: torch.device, workers: int, seed: int, train: bool):
        from torch.utils.data import DataLoader, DistributedSampler, Subset
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
    train: object            # .epoch(e) yields (input, label) batches; len() = steps per epoch
    test: object             # .epoch() yields this process's test batches
    class_counts: List[int]  # training images per class (defines many / medium / few)
    num_test: int            # size of the whole test set


def load_data(dataset: LongTailDataset, args, procs: Processes, device: torch.device) -> LongTailData:
    if dataset.RESIDENT:
        train, test = dataset.load_resident()
        train, test = train.to(device), test.to(device)
        counts = torch.bincount(train.y, minlength=dataset.NUM_CLASSES).tolist()
        batches = ResidentBatches(train, dataset.TRANSFORM, args.batch_size, procs,
                                  make_generator(args.seed, "data-order", device),
                                  make_generator(args.seed, f"augmentation/rank{procs.rank}", device))
        return LongTailData(batches, ResidentTestBatches(test, dataset.TRANSFORM, procs), counts, len(test.y))
    train, test, counts = dataset.load_files(args.image_size)
    common = dict(transform=dataset.TRANSFORM, procs=procs, device=device, workers=args.workers, seed=args.seed)
    return LongTailData(LoaderBatches(train, batch_size=args.batch_size, train=True, **common),
                        LoaderBatches(test, batch_size=EVAL_BATCH, train=False, **common), counts, len(test))


# ----------------------------------------------------------------------------- schedule and metrics

def lr_factor(epoch: int, args) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based): linear warm-up over ``warmup_epochs``
    ((epoch + 1) / warmup), then x ``lr_decay`` at each milestone ("step") or a cosine to 0 ("cosine")."""
    if epoch < args.warmup_epochs:
        return (epoch + 1) / args.warmup_epochs
    if args.schedule == "cosine":
        progress = (epoch - args.warmup_epochs) / max(1, args.n_epochs - args.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr_decay ** sum(epoch >= m for m in args.lr_milestones)


def long_tail_metrics(hits: torch.Tensor, counts: torch.Tensor, class_counts: List[int]) -> dict:
    """Accuracies in percent from per-class test hits and test counts.

    ``accuracy`` is over all test images; ``many_acc`` / ``medium_acc`` /
    ``few_acc`` are the mean per-class accuracy over the classes with more
    than 100 / 20 to 100 / fewer than 20 training images (``None`` when a group
    has no class with test images); ``per_class_acc`` is ``None`` for classes
    without test images.
    """
    hits, counts = hits.double().cpu(), counts.double().cpu()
    per_class = [100 * h / n if n > 0 else None for h, n in zip(hits.tolist(), counts.tolist())]
    result = {"accuracy": 100 * float(hits.sum() / counts.sum()) if counts.sum() > 0 else None}
    for group, classes in shot_groups(class_counts).items():
        values = [per_class[c] for c in classes if per_class[c] is not None]
        result[f"{group}_acc"] = sum(values) / len(values) if values else None
    result["per_class_acc"] = per_class
    return result


# ----------------------------------------------------------------------------- the run

@dataclass
class LongTailRun:
    args: object
    procs: Processes
    device: torch.device
    dataset: LongTailDataset
    data: LongTailData
    model: Network          # the plain network (evaluation, results)
    net: nn.Module          # what training calls: ``model`` or its DDP wrapper
    method: LongTailMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    def autocast(self):
        if self.args.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.args.channels_last and x.dim() == 4 else x


def build_network(args, dataset: LongTailDataset, method: LongTailMethod) -> Network:
    backbone_cls = get_backbone_class(args.backbone)
    kwargs = {}
    if args.width is not None:
        if "width" not in inspect.signature(backbone_cls).parameters:
            raise UserError(f"--width is not supported by backbone {args.backbone!r} (it applies to resnet32)")
        kwargs["width"] = args.width
    backbone = backbone_cls(dataset.input_shape(args.image_size), **kwargs)
    return Network(backbone, method.make_head(backbone.feature_dim))


def build_run(args, procs: Processes, device: torch.device, data: Optional[LongTailData] = None) -> LongTailRun:
    """Everything a run needs; ``data`` replaces the dataset's files (the throughput benchmark's synthetic set)."""
    seed_everything(args.seed)  # weight initialisation: identical on every process
    dataset_cls = get_lt_dataset_class(args.dataset)
    dataset = dataset_cls(args.data_path, args.imbalance_ratio)
    method = LT_METHODS[args.method](args, dataset_cls.NUM_CLASSES, device, procs.rank)
    model = build_network(args, dataset, method).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = data or load_data(dataset, args, procs, device)
    net = model
    if procs.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, args))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return LongTailRun(args, procs, device, dataset, data, model, net, method, optimizer, scheduler)


def train_step(run: LongTailRun, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SGD step of the run's arm on a batch; returns the detached loss (no host sync)."""
    with run.autocast():
        loss = run.method.loss(run.net, run.model.head, run.prepare(x), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(run: LongTailRun) -> dict:
    """Per-class hits on the test set (summed over processes) -> ``long_tail_metrics``."""
    k = run.dataset.NUM_CLASSES
    was_training = run.model.training
    run.model.eval()
    hits = torch.zeros(k, device=run.device, dtype=torch.float64)
    counts = torch.zeros(k, device=run.device, dtype=torch.float64)
    for x, y in run.data.test.epoch():
        with run.autocast():
            logits = run.model(run.prepare(x))
        hits += torch.bincount(y, weights=(logits.argmax(1) == y).double(), minlength=k)
        counts += torch.bincount(y, minlength=k).double()
    if run.procs.distributed:
        dist.all_reduce(hits)
        dist.all_reduce(counts)
    run.model.train(was_training)
    if int(counts.sum()) != run.data.num_test:
        raise RuntimeError(f"evaluated {int(counts.sum())} test images, expected {run.data.num_test}")
    return long_tail_metrics(hits, counts, run.data.class_counts)


def format_metrics(m: dict) -> str:
    show = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    return (f"accuracy {show(m['accuracy'])} | many {show(m['many_acc'])} | medium {show(m['medium_acc'])}"
            f" | few {show(m['few_acc'])}")


def run_long_tail(args, log=print, progress: ProgressBar | None = None) -> Optional[dict]:
    """Train one arm for ``n_epochs`` and evaluate the final model; the results dict on rank 0, else ``None``."""
    start = time.perf_counter()
    procs, device = start_processes(args.device)
    try:
        run = build_run(args, procs, device)
        say = log if procs.main else (lambda *a, **k: None)
        progress = progress or ProgressBar(enabled=False if not procs.main else None)
        say(f"{args.dataset} ({args.method}): {sum(run.data.class_counts)} training images, "
            f"{max(run.data.class_counts)} to {min(run.data.class_counts)} per class, {run.data.num_test} test images, "
            f"{procs.world} process(es) on {device}")
        steps = len(run.data.train)
        loss_sum = torch.zeros((), device=device)
        train_loss = None
        for epoch in range(args.n_epochs):
            run.model.train()
            loss_sum.zero_()
            n_steps = 0
            for step, (x, y) in enumerate(run.data.train.epoch(epoch)):
                loss = train_step(run, x, y)
                loss_sum += loss
                n_steps += 1
                progress.update(f"Epoch {epoch + 1}/{args.n_epochs}", step + 1, steps, loss)
            progress.close()
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            train_loss = float(loss_sum) / max(n_steps, 1)
            if not math.isfinite(train_loss):
                raise UserError(f"the training loss became {train_loss} in epoch {epoch + 1}; lower --lr "
                                f"(now {args.lr}) or check the data")
            line = f"epoch {epoch + 1}/{args.n_epochs}  lr {lr:.4g}  loss {train_loss:.4f}"
            if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.n_epochs:
                line += "  (monitoring only) " + format_metrics(evaluate(run))
            say(line)
        metrics = evaluate(run)  # the headline: the final epoch's model, never a best epoch
        say("final: " + format_metrics(metrics))
        if not procs.main:
            return None
        return {
            "setting": "long-tail",
            "args": vars(args),
            **{k: metrics[k] for k in ("accuracy", "many_acc", "medium_acc", "few_acc")},
            "class_counts": run.data.class_counts,
            "per_class_acc": metrics["per_class_acc"],
            "final_train_loss": train_loss,
            "world_size": procs.world,
            "wall_time_s": time.perf_counter() - start,
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "torch_version": torch.__version__,
        }
    finally:
        stop_processes(procs)
