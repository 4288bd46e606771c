"""The continual-learning loop: tasks in order, evaluation after each, metrics at the end."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List

import torch

from backbone import get_backbone_class
from backbone.heads import Network, make_head
from datasets import get_dataset_class
from datasets.utils.continual_dataset import ContinualDataset, Split
from datasets.utils.transforms import DeviceTransform
from models import get_model_class
from models.continual_model import ContinualModel, Setting
from utils.buffer import check_buffer_fits
from utils.callbacks import standard_callbacks
from utils.checkpoint import load_checkpoint, restore_run
from utils.guards import check_finite_loss
from utils.losses import mask_other_tasks
from utils.metrics import backward_transfer, final_average, forgetting, pad_rows
from utils.progress import ProgressBar
from utils.seeding import make_generator, seed_everything
from utils.wandb_logger import WandbLogger

EVAL_BATCH = 1024  # at most this many test images per forward pass (small inputs: MNIST, digits)
EVAL_PIXELS = 2 ** 18  # and at most this many pixels per batch: 256 images at 32x32, 64 at 64x64


def eval_batch_size(input_shape) -> int:
    """Evaluation batches bounded in images and in pixels, so that evaluation activations stay the
    size of a training step's (the CPU host-memory budget on TinyImageNet)."""
    return max(1, min(EVAL_BATCH, EVAL_PIXELS // math.prod(input_shape[1:])))


@dataclass
class Run:
    """Everything a run works on, built by ``build_run``."""
    args: object
    dataset: ContinualDataset
    model: ContinualModel
    train: Split
    test: Split
    task_of_class: torch.Tensor
    data_generator: torch.Generator
    augment_generator: torch.Generator
    transform: DeviceTransform  # the dataset's, with its constants on the run's device
    min_batch: int = 1         # smallest training batch the network accepts (2 with batch norm)


def build_network(args, dataset: ContinualDataset) -> Network:
    """Backbone first, then the head: the backbone's initialisation does not depend on the head,
    and the FNO partition comes from its own generator, so FC and FNO runs share every shared layer."""
    backbone = get_backbone_class(args.backbone)(dataset.INPUT_SHAPE)
    head = make_head(args.classifier, backbone.feature_dim, dataset.num_classes,
                     make_generator(args.seed, "fno-partition"))
    if hasattr(backbone, "init_head"):  # a backbone whose reference code also initialises the classifier
        backbone.init_head(head)
    return Network(backbone, head)


def build_run(args, dataset: ContinualDataset | None = None) -> Run:
    """Build a run; ``dataset`` replaces the one named by ``args.dataset`` (the benchmarks pass synthetic data)."""
    device = torch.device(args.device)
    if device.type == "cpu" and args.num_threads:
        torch.set_num_threads(args.num_threads)
    seed_everything(args.seed)
    if dataset is None:
        dataset = get_dataset_class(args.dataset)(args.data_path, rebuild_cache=bool(args.rebuild_cache))
    # Normalisation constants on the device once: a per-batch host-to-device copy would synchronise.
    transform = dataset.TRANSFORM.to(device)
    train, test = (s.to(device) for s in dataset.load_splits())
    if getattr(args, "buffer_size", 0):
        # inputs as stored, an int64 label and float32 logits over every class (the most a method stores)
        entry = train.x[0].numel() * train.x.element_size() + 8 + 4 * dataset.num_classes
        check_buffer_fits(args.buffer_size, entry, device)
    net = build_network(args, dataset).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    task_of_class = dataset.task_of_class().to(device)
    augment_generator = make_generator(args.seed, "augmentation", device)
    setting = Setting(device=device, task_of_class=task_of_class,
                      augment=lambda x: transform.train(x, augment_generator),
                      buffer_generator=make_generator(args.seed, "buffer", device),
                      lr_milestones=dataset.LR_MILESTONES, lr_gamma=dataset.LR_GAMMA)
    model = get_model_class(args.model)(net, args, setting)
    if args.compile:
        model.net = torch.compile(model.net, mode=args.compile)
    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    return Run(args, dataset, model, train, test, task_of_class,
               make_generator(args.seed, "data-order", device), augment_generator, transform,
               min_batch=2 if has_batch_norm else 1)


@torch.no_grad()
def evaluate(run: Run, n_seen_tasks: int):
    """Class-IL and Task-IL accuracy (percent) on the test set of each of the first ``n_seen_tasks`` tasks.

    Class-IL takes the argmax over all classes of the benchmark (the authors'
    protocol); Task-IL takes it over the sample's own task's classes only.
    """
    model, test, dataset = run.model, run.test, run.dataset
    was_training = model.training
    model.eval()
    n_tasks = n_seen_tasks
    test_task = run.task_of_class[test.y]
    seen = torch.nonzero(test_task < n_tasks).flatten()  # unseen tasks' samples are not evaluated at all
    hits_cil = torch.zeros(n_tasks, device=test.y.device)
    hits_til = torch.zeros(n_tasks, device=test.y.device)
    counts = torch.bincount(test_task[seen], minlength=n_tasks).float()
    for idx in seen.split(eval_batch_size(dataset.INPUT_SHAPE)):
        x, y, t = test.x[idx], test.y[idx], test_task[idx]
        with model.autocast():
            logits = model(run.transform.test(x)).float()
        cil = logits.argmax(1) == y
        til = mask_other_tasks(logits, y, run.task_of_class).argmax(1) == y
        hits_cil += torch.bincount(t, weights=cil.float(), minlength=n_tasks)
        hits_til += torch.bincount(t, weights=til.float(), minlength=n_tasks)
    model.train(was_training)
    return (100 * hits_cil / counts).tolist(), (100 * hits_til / counts).tolist()


@dataclass
class TaskData:
    """A task's training split as a method sees it at ``begin_task`` / ``end_task``.

    ``x`` are the raw (non-augmented) inputs on the run's device and ``y`` their
    labels; ``generator`` is the run's data-order stream (draws from it are
    part of the run's reproducible randomness); ``augment`` maps raw inputs to
    augmented network inputs, ``prepare`` to non-augmented network inputs.
    """
    task: int
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor  # into the run's training split
    generator: torch.Generator
    augment: Callable[[torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int):
        """(raw inputs, labels) in order, ``batch_size`` at a time (for a pass over the task at its end)."""
        for idx in torch.arange(len(self.y), device=self.y.device).split(batch_size):
            yield self.x[idx], self.y[idx]


def task_data(run: Run, task: int, indices: torch.Tensor) -> TaskData:
    return TaskData(task, run.train.x[indices], run.train.y[indices], indices, run.data_generator,
                    run.model.setting.augment, run.transform.test)


def stages(run: Run) -> List[TaskData]:
    """The training data of each stage: one per task, or a single one (every task) for JOINT models."""
    train_task = run.task_of_class[run.train.y]
    per_task = [torch.nonzero(train_task == t).flatten() for t in range(run.dataset.N_TASKS)]
    if run.model.JOINT:
        return [task_data(run, run.dataset.N_TASKS - 1, torch.cat(per_task))]
    return [task_data(run, t, idx) for t, idx in enumerate(per_task)]


def epoch_batches(order: torch.Tensor, batch_size: int, min_batch: int = 1) -> list:
    """``order`` cut into batches of ``batch_size``; a last batch smaller than ``min_batch`` joins the one before.

    Batch norm cannot normalise a batch of one sample, so networks with batch
    norm get ``min_batch = 2``: a task whose size leaves one sample over trains
    it in a last batch of ``batch_size + 1`` instead of failing (the paper's
    benchmarks never leave one over; every sample is still seen once per epoch).
    """
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_batch:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def train_stage(run: Run, data: TaskData, callbacks=(), first_step: int = 0) -> tuple:
    """A fresh optimizer and scheduler (the method builds both), ``begin_task``, the epochs of
    ``observe``, a check that the loss is still finite, ``end_task``.

    Returns the last batch's loss (a float) and the number of optimizer steps taken."""
    args, model, train, task = run.args, run.model, run.train, data.task
    model.train()
    model.prepare_task(task)
    model.begin_task(task, data)
    positions = torch.arange(len(data), device=data.y.device)
    per_epoch = len(epoch_batches(positions, args.batch_size, run.min_batch))
    total = per_epoch * args.n_epochs
    loss = torch.zeros(())
    for epoch in range(args.n_epochs):
        order = data.indices[torch.randperm(len(data), device=data.y.device, generator=run.data_generator)]
        for step, batch in enumerate(epoch_batches(order, args.batch_size, run.min_batch)):
            raw, labels = train.x[batch], train.y[batch]
            loss = model.observe(run.transform.train(raw, run.augment_generator), labels, raw)
            for callback in callbacks:
                callback.on_step(run, task, epoch * per_epoch + step + 1, total, loss)
        model.end_epoch()
    last = float(loss)
    check_finite_loss(last, f"task {task + 1} (steps {first_step + 1}-{first_step + total})", args.lr)
    model.end_task(task, data)
    return last, total


def new_history() -> dict:
    """Everything per task that the results are made of; a checkpoint stores it as it is."""
    return {"stages_done": 0, "rows_cil": [], "rows_til": [], "collapse": [], "n_steps": 0,
            "train_time_s": 0.0, "wall_time_s": 0.0}


def resume(run: Run, log) -> tuple:
    """(history, wandb logger state) from ``--checkpoint_dir`` when it holds a checkpoint, else fresh ones."""
    args = run.args
    saved = load_checkpoint(args) if args.checkpoint_dir else None
    if saved is None:
        if args.resume:
            log(f"No checkpoint in {args.checkpoint_dir} yet: starting from the first task")
        return new_history(), None
    restore_run(run, saved)
    log(f"Resuming from {args.checkpoint_dir}: {saved['history']['stages_done']} task(s) already done")
    return saved["history"], saved["logger"]


def run_experiment(args, progress: ProgressBar | None = None, log=print, callbacks=()) -> dict:
    """Train and evaluate one run; return the results dictionary (see README for the fields).

    The protocol: every stage (task) in order, trained and then evaluated on
    the tasks seen so far; the callbacks (progress, collapse metrics, wandb,
    checkpoints, then ``callbacks``) do everything else.  With
    ``--checkpoint_dir`` the run continues from its last saved task.  On
    KeyboardInterrupt (SIGINT, or SIGTERM as ``main`` maps it) the run stops at
    once; the checkpoint keeps every completed task.
    """
    start = time.perf_counter()
    run = build_run(args)
    history, logger_state = resume(run, log)
    elapsed_before = history["wall_time_s"]
    hooks = standard_callbacks(args, progress or ProgressBar(), log, WandbLogger(args, logger_state),
                               history["stages_done"]) + list(callbacks)
    results, exit_code = None, 1
    try:
        for stage, data in enumerate(stages(run)):
            if stage < history["stages_done"]:
                continue
            tic = time.perf_counter()
            last_loss, steps = train_stage(run, data, hooks, history["n_steps"])
            history["train_time_s"] += time.perf_counter() - tic
            history["n_steps"] += steps
            cil, til = evaluate(run, data.task + 1)
            history["rows_cil"].append(cil)
            history["rows_til"].append(til)
            history["stages_done"] = stage + 1
            history["wall_time_s"] = elapsed_before + time.perf_counter() - start
            log(f"Task {data.task + 1}/{run.dataset.N_TASKS}  Class-IL {sum(cil) / len(cil):6.2f}  Task-IL "
                f"{sum(til) / len(til):6.2f}  loss {last_loss:.4f}  per task (Class-IL): {' '.join(f'{a:.1f}' for a in cil)}")
            for hook in hooks:
                hook.on_task_end(run, data.task, history)
        results = make_results(run, history, elapsed_before + time.perf_counter() - start)
        exit_code = 0
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        for hook in hooks:
            hook.on_run_end(run, results, exit_code)
    return results


def make_results(run: Run, history: dict, wall_time_s: float) -> dict:
    args, n_tasks = run.args, run.dataset.N_TASKS
    m_cil, m_til = pad_rows(history["rows_cil"], n_tasks), pad_rows(history["rows_til"], n_tasks)
    full = len(history["rows_cil"]) == n_tasks
    device = torch.device(args.device)
    return {
        "args": vars(args),
        "class_il": final_average(m_cil),
        "task_il": final_average(m_til),
        "acc_matrix_class_il": m_cil,
        "acc_matrix_task_il": m_til,
        "forgetting_class_il": forgetting(m_cil) if full else None,
        "forgetting_task_il": forgetting(m_til) if full else None,
        "bwt_class_il": backward_transfer(m_cil) if full else None,
        "bwt_task_il": backward_transfer(m_til) if full else None,
        "n_steps": history["n_steps"],
        "train_time_s": history["train_time_s"],
        "collapse": history["collapse"] if args.collapse_metrics else None,
        "wall_time_s": wall_time_s,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_version": torch.__version__,
    }
