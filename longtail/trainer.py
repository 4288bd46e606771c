"""The long-tailed training loop: one arm for ``n_epochs``, single-process or DistributedDataParallel.

The protocol follows the authors' released code (khyong/FNO-classifier,
``fno_lt``); docs/long_tail.md lists each choice and where it comes from.
The test set is evaluated every ``--eval_every`` epochs (default 1, as the
authors do): the results hold the final epoch's accuracy (the headline) and
the best evaluated epoch's (selected on the test set, as the paper's table).

The loop is the protocol only; progress, wandb and checkpoints are the
core's callbacks (``longtail.callbacks``), called after every step and epoch.
With ``--checkpoint_dir`` the run continues from its last saved epoch
(``longtail.checkpoint``); on KeyboardInterrupt (SIGINT, or SIGTERM as the
entry point maps it) it stops at once and the checkpoint keeps every saved epoch.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from backbone import get_backbone_class
from backbone.heads import Network
from backbone.resnet_imagenet import TorchvisionResNet
from longtail.args import DEBUG_STEPS
from longtail.arms import LT_METHODS, LongTailMethod
from longtail.batches import LongTailData, load_data
from longtail.callbacks import long_tail_callbacks
from longtail.checkpoint import find_saved, restore_run
from longtail.data import LongTailDataset, describe_shot_groups, get_lt_dataset_class, shot_groups
from longtail.metrics import GROUP_KEYS, best_index, format_metrics, long_tail_metrics
from longtail.processes import Processes, start_processes, stop_processes
from longtail.schedule import is_evaluated, make_optimizer, make_scheduler
from utils.amp import autocast, check_amp, grad_scaler
from utils.callbacks import reporting_run_end
from utils.checkpoint import resume_or_start
from utils.errors import DataError, UserError
from utils.guards import check_finite_loss
from utils.seeding import seed_everything

PRETRAINED_DROPPED = ("fc.weight", "fc.bias")  # a torchvision classifier layer: not part of a feature extractor
BEST_EPOCH_NOTE = ("selected on the test set (the authors evaluate every epoch and report the best, as the "
                   "paper's table does); optimistic, not a held-out estimate")


# ----------------------------------------------------------------------------- the run

@dataclass
class LongTailRun:
    args: object
    procs: Processes
    device: torch.device
    dataset: LongTailDataset
    data: LongTailData
    model: Network          # the plain network (evaluation, results, checkpoints)
    net: nn.Module          # what training calls: ``model`` or its DDP wrapper
    method: LongTailMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Optional[torch.amp.GradScaler] = None  # --amp fp16 only
    groups: Optional[dict] = None                   # many / medium / few class indices

    def autocast(self):
        return autocast(self.args.amp, self.device)

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
    """The backbone of the core's registry (``--width``, ``--pretrained``), then the arm's head."""
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
    optimizer = make_optimizer(model, args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return LongTailRun(args, procs, device, dataset, data, model, net, method, optimizer,
                       make_scheduler(optimizer, args), grad_scaler(args.amp), groups)


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
def evaluate(run: LongTailRun):
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


# ----------------------------------------------------------------------------- epochs and results

def new_history() -> dict:
    """What the results are made of, epoch by epoch; a checkpoint stores it as it is.

    ``evaluated``: the 1-based epochs evaluated so far, ``hits`` their per-class
    test hits, ``counts`` the per-class test counts; ``train_loss`` and ``lr``
    are the last epoch's.
    """
    return {"stages_done": 0, "evaluated": [], "hits": [], "counts": None, "train_loss": None, "lr": None,
            "wall_time_s": 0.0}


def train_epoch(run: LongTailRun, epoch: int, history: dict, callbacks=()) -> Optional[dict]:
    """Train epoch ``epoch`` (0-based), evaluate when due, and record both in ``history``.

    The epoch's loss and test hits come back to the host in one transfer.
    Returns the test metrics when the epoch was evaluated, else ``None``.
    """
    args = run.args
    run.model.train()
    loss_sum = torch.zeros((), device=run.device, dtype=torch.float64)
    steps, n_steps = len(run.data.train), 0
    if getattr(args, "debug_mode", 0):  # absent from the arguments of a run checkpointed before the flag
        steps = min(steps, DEBUG_STEPS)
    for step, (x, y) in enumerate(run.data.train.epoch(epoch)):
        if step == steps:
            break
        loss = train_step(run, x, y)
        loss_sum += loss
        n_steps += 1
        for callback in callbacks:
            callback.on_step(run, epoch, step + 1, steps, loss)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    due = is_evaluated(args, epoch + 1)
    on_device = [loss_sum.view(1)]
    if due:
        on_device += list(evaluate(run))
    host = torch.cat(on_device).tolist()
    train_loss = host[0] / max(n_steps, 1)
    check_finite_loss(train_loss, f"epoch {epoch + 1}", args.lr)
    history.update(stages_done=epoch + 1, train_loss=train_loss, lr=lr)
    if not due:
        return None
    k = run.dataset.NUM_CLASSES
    history["evaluated"].append(epoch + 1)
    history["hits"].append(host[1:1 + k])
    history["counts"] = host[1 + k:]
    return long_tail_metrics(history["hits"][-1], history["counts"], run.groups)


def make_results(run: LongTailRun, history: dict, wall_time_s: float) -> dict:
    args, dataset_cls = run.args, type(run.dataset)
    if int(sum(history["counts"])) != run.data.num_test:
        raise RuntimeError(f"evaluated {int(sum(history['counts']))} test images, expected {run.data.num_test}")
    per_epoch = [long_tail_metrics(hits, history["counts"], run.groups) for hits in history["hits"]]
    final, best = per_epoch[-1], best_index(per_epoch)
    return {
        "setting": "long-tail",
        "args": vars(args),
        "headline": "final epoch",
        "partial": bool(getattr(args, "debug_mode", 0)),  # --debug_mode: summaries keep it apart
        **{k: final[k] for k in GROUP_KEYS},
        "final_epoch": {"epoch": args.n_epochs, **{k: final[k] for k in GROUP_KEYS}},
        "best_epoch": {"epoch": history["evaluated"][best], **{k: per_epoch[best][k] for k in GROUP_KEYS},
                       "selected_on": BEST_EPOCH_NOTE},
        "test_accuracy_per_epoch": {str(e): m["accuracy"] for e, m in zip(history["evaluated"], per_epoch)},
        "shot_groups": {"definition": args.shot_groups,
                        "description": describe_shot_groups(args.shot_groups, dataset_cls.SHOT_RANKS,
                                                            dataset_cls.NUM_CLASSES),
                        **run.groups},
        "class_counts": run.data.class_counts,
        "per_class_acc": final["per_class_acc"],
        "final_train_loss": history["train_loss"],
        "world_size": run.procs.world,
        "wall_time_s": wall_time_s,
        "device": str(run.device) + (f" ({torch.cuda.get_device_name(run.device)})"
                                     if run.device.type == "cuda" else ""),
        "torch_version": torch.__version__,
    }


def headline(args, results: dict) -> str:
    """The one line the entry point prints at the end."""
    return f"Final ({args.method}, {args.dataset}, ratio {args.imbalance_ratio}): {format_metrics(results)}"


def silent(*args, **kwargs) -> None:
    pass


def run_long_tail(args, log=print, progress=None, callbacks=()) -> Optional[dict]:
    """Train one arm for ``n_epochs``, evaluating every ``eval_every`` epochs and after the last; the
    results dict on rank 0, else ``None``.  ``progress`` replaces the progress bar; ``callbacks`` run
    after the standard ones."""
    start = time.perf_counter()
    procs, device = start_processes(args.device)
    try:
        run = build_run(args, procs, device)
        say = log if procs.main else silent
        counts = run.data.class_counts
        say(f"{args.dataset} ({args.method}): {sum(counts)} training images, {max(counts)} to {min(counts)} per "
            f"class, {run.data.num_test} test images, {procs.world} process(es) on {device}")
        history, logger_state = resume_or_start(run, say, find_saved, restore_run, new_history, "epoch")
        hooks = long_tail_callbacks(run, progress, say, logger_state, history["stages_done"]) + list(callbacks)
        elapsed_before = history["wall_time_s"]
        with reporting_run_end(run, hooks) as outcome:
            for epoch in range(history["stages_done"], args.n_epochs):
                metrics = train_epoch(run, epoch, history, hooks)
                history["wall_time_s"] = elapsed_before + time.perf_counter() - start
                say(f"epoch {epoch + 1}/{args.n_epochs}  lr {history['lr']:.4g}  loss {history['train_loss']:.4f}"
                    + (f"  test accuracy {metrics['accuracy']:.2f}" if metrics else ""))
                for hook in hooks:
                    hook.on_stage_end(run, epoch, history)
            if procs.main:
                outcome.results = make_results(run, history, elapsed_before + time.perf_counter() - start)
                best = outcome.results["best_epoch"]
                say(f"best epoch {best['epoch']} (selected on the test set): " + format_metrics(best))
        return outcome.results
    finally:
        stop_processes(procs)
