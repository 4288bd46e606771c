"""The long-tailed training loop: the paper's arms, one trainer, single-process or DistributedDataParallel.

An arm (``--method``) is a head plus a training loss; everything else - data,
schedule, evaluation, many/medium/few metrics - is shared, so the arms differ
in exactly what the comparison is about.  The protocol follows the authors'
released code (khyong/FNO-classifier, ``fno_lt``); docs/long_tail.md lists
each choice and where it comes from.

The test set is evaluated every ``--eval_every`` epochs (default 1, as the
authors do): the results hold the final epoch's accuracy (the headline) and
the best evaluated epoch's (selected on the test set, as the paper's table).

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
from backbone.heads import FCHead, FixedHead, Network, fno_matrix, simplex_etf
from backbone.resnet_imagenet import TorchvisionResNet
from datasets.long_tail import LongTailDataset, describe_shot_groups, get_lt_dataset_class, shot_groups
from datasets.utils.continual_dataset import Split
from datasets.utils.transforms import DeviceTransform
from utils.errors import DataError, UserError
from utils.guards import check_finite_loss
from utils.lt_losses import (arc_mixup_batch, arc_mixup_loss, class_balancing_scale, dot_regression_loss,
                             draw_lambda, mixup_batch, mixup_cross_entropy)
from utils.progress import ProgressBar
from utils.registry import registrar
from utils.seeding import derive_seed, make_generator, seed_everything

LT_METHODS: dict = {}
register_lt_method = registrar(LT_METHODS, "long-tail method")
EVAL_BATCH = 512
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRETRAINED_DROPPED = ("fc.weight", "fc.bias")  # a torchvision classifier layer: not part of a feature extractor


# ----------------------------------------------------------------------------- heads

class BatchNormETFHead(FixedHead):
    """The fixed simplex-ETF classifier as the long-tail authors (and Yang et al.) run it.

    z = BatchNorm(h), no L2 normalisation, no scale; logits = z M^T with the
    unscaled prototypes M (the per-batch class-balancing lengths belong to the
    training loss).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight, scale=False)
        self.bn = nn.BatchNorm1d(weight.shape[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(self.bn(h.float()))

    def train_features(self, h: torch.Tensor) -> torch.Tensor:
        """z as ``forward`` computed it in train mode (this batch's statistics, same affine parameters).

        The loss needs z itself, which the logits do not determine; recomputing
        it here leaves the running statistics updated once, by ``forward``.
        """
        return F.batch_norm(h.float(), None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)


# ----------------------------------------------------------------------------- arms

class LongTailMethod:
    """An arm: ``make_head`` and the training ``loss`` of one batch.

    ``CLEAN_BN_PASS``: after the loss's forward, one no-grad forward of the
    clean batch in train mode, so that batch-norm running statistics see clean
    and mixed batches about equally (the authors' mixup and arc-mixup trainers).
    Mixing draws come from this process's own streams (``mixing/rank<r>``), so
    they are reproducible and do not disturb data order or augmentation.
    """

    CLEAN_BN_PASS = False

    def __init__(self, args, dataset_cls: type, device: torch.device, rank: int = 0):
        self.args = args
        self.dataset_cls = dataset_cls
        self.num_classes = dataset_cls.NUM_CLASSES
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

    CLEAN_BN_PASS = True

    def make_head(self, feature_dim):
        return FCHead(feature_dim, self.num_classes)

    def loss(self, net, head, x, y):
        lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
        x_mix, y_partner = mixup_batch(x, y, lam, self.generator)
        return mixup_cross_entropy(net(x_mix), y, y_partner, lam)


@register_lt_method("etf-dr")
class ETFDotRegression(LongTailMethod):
    """The paper's "mixup + ETF + DR" row (the authors' ``etf_m`` trainer).

    Input mixup (lambda ~ Beta(alpha, alpha), random partner); features
    batch-normalised (no L2 normalisation); each prototype scaled by the
    batch's class-balancing length sqrt((B / C) / n_c), counted on the
    un-mixed labels; loss lambda DR(y) + (1 - lambda) DR(y_partner).  No clean
    batch-norm pass: the authors' ``etf_m`` has none.
    """

    MIX = True

    def make_head(self, feature_dim):
        return BatchNormETFHead(simplex_etf(self.num_classes, feature_dim, make_generator(self.args.seed, "etf")))

    def loss(self, net, head, x, y):
        if self.MIX:
            lam = draw_lambda(self.lambda_rng, self.args.mixup_alpha)
            x, y_partner = mixup_batch(x, y, lam, self.generator)
        _, h = net(x, return_features=True)
        z = head.train_features(h)
        prototypes = class_balancing_scale(y, self.num_classes).unsqueeze(1) * head.weight
        penalty = self.dataset_cls.DR_NORM_PENALTY
        loss = dot_regression_loss(z, prototypes, y, penalty)
        if self.MIX:
            loss = lam * loss + (1 - lam) * dot_regression_loss(z, prototypes, y_partner, penalty)
        return loss


@register_lt_method("etf-dr-plain")
class ETFDotRegressionPlain(ETFDotRegression):
    """Yang et al.'s un-mixed arm (the authors' ``etf`` trainer): ``etf-dr`` without mixup."""

    MIX = False


@register_lt_method("arc-mixup")
class ArcMixup(LongTailMethod):
    """Fixed FNO head (no scale) with arc-mixup and the -log(q_hat . h_hat) loss (the authors' ``mask`` trainer)."""

    CLEAN_BN_PASS = True

    def make_head(self, feature_dim):
        generator = make_generator(self.args.seed, "fno-partition")  # the CL side's stream for the same matrix
        return FixedHead(fno_matrix(self.num_classes, feature_dim, generator), scale=False)

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
    transform = dataset.TRANSFORM.to(device)  # constants on the device once, not one host copy per batch
    if dataset.RESIDENT:
        if args.color_jitter:
            raise UserError(f"--color_jitter applies to the decoded-image sets (imagenet-lt, places-lt), "
                            f"not to {args.dataset}")
        train, test = dataset.load_resident()
        train, test = train.to(device), test.to(device)
        counts = torch.bincount(train.y, minlength=dataset.NUM_CLASSES).tolist()
        batches = ResidentBatches(train, transform, args.batch_size, procs,
                                  make_generator(args.seed, "data-order", device),
                                  make_generator(args.seed, f"augmentation/rank{procs.rank}", device))
        return LongTailData(batches, ResidentTestBatches(test, transform, procs), counts, len(test.y))
    train, test, counts = dataset.load_files(args.image_size, args.color_jitter)
    common = dict(transform=transform, procs=procs, device=device, workers=args.workers, seed=args.seed)
    return LongTailData(LoaderBatches(train, batch_size=args.batch_size, train=True, **common),
                        LoaderBatches(test, batch_size=EVAL_BATCH, train=False, **common), counts, len(test))


# ----------------------------------------------------------------------------- schedule and metrics

WARMUP_START = 1 / 3  # the authors' WarmupMultiStepLR starts its linear warm-up at a third of the lr


def lr_factor(epoch: int, args) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based).

    Warm-up over ``warmup_epochs`` w: 1/3 + (2/3) epoch / w (1/3, 7/15, 3/5,
    11/15, 13/15 for w = 5, as the authors' scheduler), then x ``lr_decay`` at
    each milestone ("step") or a cosine to 0 over the remaining epochs
    ("cosine"; with w = 0 the authors' CosineAnnealingLR(T_max = n_epochs)).
    """
    if epoch < args.warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / args.warmup_epochs
    if args.schedule == "cosine":
        progress = (epoch - args.warmup_epochs) / max(1, args.n_epochs - args.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr_decay ** sum(epoch >= m for m in args.lr_milestones)


def long_tail_metrics(hits: torch.Tensor, counts: torch.Tensor, groups: dict) -> dict:
    """Accuracies in percent from per-class test hits and test counts.

    ``accuracy`` is over all test images; ``many_acc`` / ``medium_acc`` /
    ``few_acc`` are the mean per-class accuracy over the classes of each of
    ``groups`` (``shot_groups``; ``None`` when a group has no class with test
    images); ``per_class_acc`` is ``None`` for classes without test images.
    """
    hits, counts = hits.double().cpu(), counts.double().cpu()
    per_class = [100 * h / n if n > 0 else None for h, n in zip(hits.tolist(), counts.tolist())]
    result = {"accuracy": 100 * float(hits.sum() / counts.sum()) if counts.sum() > 0 else None}
    for group, classes in groups.items():
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
    scaler: Optional[torch.amp.GradScaler] = None  # --amp fp16 only
    groups: Optional[dict] = None                   # many / medium / few class indices

    def autocast(self):
        if self.args.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.args.amp])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.args.channels_last and x.dim() == 4 else x


def load_pretrained(backbone: nn.Module, path: str) -> None:
    """Load a local state-dict file into ``backbone``; torchvision ResNets take torchvision's own files.

    A torchvision classifier (``fc.*``) is dropped, as the authors drop it;
    every other tensor must match by name and shape, because a partial load
    would silently fine-tune from a half-random network.
    """
    target = backbone.net if isinstance(backbone, TorchvisionResNet) else backbone  # torchvision's names
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"--pretrained {path}: no such file") from None
    except Exception as exc:  # torch.load raises many types on a corrupt or foreign file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"--pretrained {path}: not a readable torch state-dict file ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"--pretrained {path}: expected a state dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if k not in PRETRAINED_DROPPED}
    own = target.state_dict()
    problems = {"missing": sorted(set(own) - set(state)), "unexpected": sorted(set(state) - set(own)),
                "wrong shape": sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)}
    listed = [f"{what}: {', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
              for what, keys in problems.items() if keys]
    if listed:
        raise DataError(f"--pretrained {path} does not fit the {type(backbone).__name__} backbone "
                        f"({'; '.join(listed)})")
    target.load_state_dict(state)


def build_network(args, dataset: LongTailDataset, method: LongTailMethod) -> Network:
    backbone_cls = get_backbone_class(args.backbone)
    kwargs = {}
    if args.width is not None:
        if "width" not in inspect.signature(backbone_cls).parameters:
            raise UserError(f"--width is not supported by backbone {args.backbone!r} (it applies to resnet32)")
        kwargs["width"] = args.width
    backbone = backbone_cls(dataset.input_shape(args.image_size), **kwargs)
    if args.pretrained:
        load_pretrained(backbone, args.pretrained)
    return Network(backbone, method.make_head(backbone.feature_dim))


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise UserError(f"--amp fp16 (autocast with a GradScaler; --load_best_args sets it for imagenet-lt and "
                        f"places-lt) needs CUDA; on {device.type} give --amp bf16 or --amp none")


def build_run(args, procs: Processes, device: torch.device, data: Optional[LongTailData] = None) -> LongTailRun:
    """Everything a run needs; ``data`` replaces the dataset's files (the throughput benchmark's synthetic set)."""
    check_amp(args.amp, device)
    seed_everything(args.seed)  # weight initialisation: identical on every process
    dataset_cls = get_lt_dataset_class(args.dataset)
    dataset = dataset_cls(args.data_path, args.imbalance_ratio)
    method = LT_METHODS[args.method](args, dataset_cls, device, procs.rank)
    model = build_network(args, dataset, method).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = data or load_data(dataset, args, procs, device)
    groups = shot_groups(data.class_counts, args.shot_groups, dataset_cls.SHOT_RANKS)
    net = model
    if procs.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, args))
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return LongTailRun(args, procs, device, dataset, data, model, net, method, optimizer, scheduler, scaler, groups)


def train_step(run: LongTailRun, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One SGD step of the run's arm on a batch; returns the detached loss (no host sync, except
    GradScaler's own inf check under --amp fp16)."""
    x = run.prepare(x)
    with run.autocast():
        loss = run.method.loss(run.net, run.model.head, x, y)
        if run.method.CLEAN_BN_PASS:
            with torch.no_grad():
                run.model(x)  # train mode: only the batch-norm running statistics change
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        loss.backward()
        run.optimizer.step()
    else:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    return loss.detach()


@torch.no_grad()
def evaluate(run: LongTailRun) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class test hits and test counts (float64, on the device, summed over processes; no host sync)."""
    k = run.dataset.NUM_CLASSES
    was_training = run.model.training
    run.model.eval()
    hits = torch.zeros(k, device=run.device, dtype=torch.float64)
    counts = torch.zeros(k, device=run.device, dtype=torch.float64)
    for x, y in run.data.test.epoch():
        with run.autocast():
            logits = run.model(run.prepare(x))
        # index_add_ rather than bincount: CUDA's bincount reads the largest label back to the host
        hits.index_add_(0, y, (logits.argmax(1) == y).double())
        counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    if run.procs.distributed:
        dist.all_reduce(hits)
        dist.all_reduce(counts)
    run.model.train(was_training)
    return hits, counts


def format_metrics(m: dict) -> str:
    show = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    return (f"accuracy {show(m['accuracy'])} | many {show(m['many_acc'])} | medium {show(m['medium_acc'])}"
            f" | few {show(m['few_acc'])}")


GROUP_KEYS = ("accuracy", "many_acc", "medium_acc", "few_acc")
BEST_EPOCH_NOTE = ("selected on the test set (the authors evaluate every epoch and report the best, as the "
                   "paper's table does); optimistic, not a held-out estimate")


def run_long_tail(args, log=print, progress: ProgressBar | None = None) -> Optional[dict]:
    """Train one arm for ``n_epochs``, evaluating every ``eval_every`` epochs and after the last;
    the results dict on rank 0, else ``None``."""
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
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        train_loss = None
        evaluated = []  # (1-based epoch, per-class hits on the device)
        counts = None
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
            host = [loss_sum]
            if (args.eval_every and (epoch + 1) % args.eval_every == 0) or epoch + 1 == args.n_epochs:
                hits, counts = evaluate(run)
                evaluated.append((epoch + 1, hits))
                host.append(100 * hits.sum() / counts.sum())
            host = torch.stack(host).tolist()  # the epoch's one host transfer: its loss and test accuracy
            train_loss = host[0] / max(n_steps, 1)
            check_finite_loss(train_loss, f"epoch {epoch + 1}", args.lr)
            say(f"epoch {epoch + 1}/{args.n_epochs}  lr {lr:.4g}  loss {train_loss:.4f}"
                + (f"  test accuracy {host[1]:.2f}" if len(host) > 1 else ""))
        if int(counts.sum()) != run.data.num_test:
            raise RuntimeError(f"evaluated {int(counts.sum())} test images, expected {run.data.num_test}")
        all_hits = torch.stack([h for _, h in evaluated]).cpu()
        per_epoch = [long_tail_metrics(h, counts, run.groups) for h in all_hits]
        final = per_epoch[-1]
        # ties go to the later epoch, as the authors' ">= best" does
        best = max(range(len(per_epoch)), key=lambda i: (per_epoch[i]["accuracy"], i))
        say("final: " + format_metrics(final))
        say(f"best epoch {evaluated[best][0]} (selected on the test set): " + format_metrics(per_epoch[best]))
        if not procs.main:
            return None
        dataset_cls = type(run.dataset)
        return {
            "setting": "long-tail",
            "args": vars(args),
            "headline": "final epoch",
            **{k: final[k] for k in GROUP_KEYS},
            "final_epoch": {"epoch": args.n_epochs, **{k: final[k] for k in GROUP_KEYS}},
            "best_epoch": {"epoch": evaluated[best][0], **{k: per_epoch[best][k] for k in GROUP_KEYS},
                           "selected_on": BEST_EPOCH_NOTE},
            "test_accuracy_per_epoch": {str(e): m["accuracy"] for (e, _), m in zip(evaluated, per_epoch)},
            "shot_groups": {"definition": args.shot_groups,
                            "description": describe_shot_groups(args.shot_groups, dataset_cls.SHOT_RANKS,
                                                                dataset_cls.NUM_CLASSES),
                            **run.groups},
            "class_counts": run.data.class_counts,
            "per_class_acc": final["per_class_acc"],
            "final_train_loss": train_loss,
            "world_size": procs.world,
            "wall_time_s": time.perf_counter() - start,
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "torch_version": torch.__version__,
        }
    finally:
        stop_processes(procs)
