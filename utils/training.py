"""The continual-learning loop: tasks in order, evaluation after each, metrics at the end."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List

import torch

from backbone import get_backbone_class
from backbone.heads import Network, make_head
from datasets import get_dataset_class
from datasets.utils.continual_dataset import ContinualDataset, Split
from models import get_model_class
from models.continual_model import ContinualModel, Setting
from utils.buffer import check_buffer_fits
from utils.checkpoint import load_checkpoint, restore_run, save_checkpoint
from utils.collapse import summary as collapse_summary, task_collapse_metrics
from utils.errors import UserError
from utils.guards import check_finite_loss
from utils.losses import mask_other_tasks
from utils.metrics import backward_transfer, final_average, forgetting, pad_rows
from utils.progress import ProgressBar
from utils.seeding import make_generator, seed_everything
from utils.wandb_logger import WandbLogger

EVAL_BATCH = 1024  # test images per forward pass at 32x32 pixels


EVAL_PIXELS = 2 ** 18  # images x pixels per evaluation batch: 256 at 32x32, 64 at 64x64


def eval_batch_size(input_shape) -> int:
    """At most ``EVAL_BATCH`` images, and at most ``EVAL_PIXELS`` pixels per batch, so that evaluation
    activations stay the size of a training step's (the CPU host-memory budget on TinyImageNet)."""
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
    scheduler: object = None   # the current task's learning-rate scheduler, if the dataset has one
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
        dataset = get_dataset_class(args.dataset)(args.data_path)
    # Normalisation constants on the device once: a per-batch host-to-device copy would synchronise.
    dataset.TRANSFORM = dataset.TRANSFORM.to(device)
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
                      augment=lambda x: dataset.TRANSFORM.train(x, augment_generator),
                      buffer_generator=make_generator(args.seed, "buffer", device))
    model = get_model_class(args.model)(net, args, setting)
    if args.compile:
        model.net = torch.compile(model.net, mode=args.compile)
    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    return Run(args, dataset, model, train, test, task_of_class,
               make_generator(args.seed, "data-order", device), augment_generator,
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
            logits = model(dataset.TRANSFORM.test(x)).float()
        cil = logits.argmax(1) == y
        til = mask_other_tasks(logits, y, run.task_of_class).argmax(1) == y
        hits_cil += torch.bincount(t, weights=cil.float(), minlength=n_tasks)
        hits_til += torch.bincount(t, weights=til.float(), minlength=n_tasks)
    model.train(was_training)
    return (100 * hits_cil / counts).tolist(), (100 * hits_til / counts).tolist()


def stages(run: Run):
    """(task index, training indices) per stage: one per task, or a single one for JOINT models."""
    train_task = run.task_of_class[run.train.y]
    per_task = [torch.nonzero(train_task == t).flatten() for t in range(run.dataset.N_TASKS)]
    if run.model.JOINT:
        return [(run.dataset.N_TASKS - 1, torch.cat(per_task))]
    return list(enumerate(per_task))


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


def train_stage(run: Run, task: int, indices: torch.Tensor, progress: ProgressBar,
                logger: WandbLogger | None = None):
    """``begin_task``, the epochs of ``observe`` over ``indices``, ``end_task``.

    Returns the last batch's loss and the number of optimizer steps taken."""
    args, model, train, transform = run.args, run.model, run.train, run.dataset.TRANSFORM
    model.train()
    model.begin_task(task)
    model.opt = model.build_optimizer()
    scheduler = run.scheduler = run.dataset.get_scheduler(model.opt, args)
    batches_per_epoch = len(epoch_batches(indices, args.batch_size, run.min_batch))
    total = batches_per_epoch * args.n_epochs
    label = f"Task {task + 1}/{run.dataset.N_TASKS}"
    loss = torch.zeros(())
    for epoch in range(args.n_epochs):
        order = indices[torch.randperm(len(indices), device=indices.device, generator=run.data_generator)]
        for step, batch in enumerate(epoch_batches(order, args.batch_size, run.min_batch)):
            raw, labels = train.x[batch], train.y[batch]
            loss = model.observe(transform.train(raw, run.augment_generator), labels, raw)
            progress.update(label, epoch * batches_per_epoch + step + 1, total, loss)
            if logger is not None:
                logger.train_step(loss)
        if scheduler is not None:
            scheduler.step()
    progress.close()
    model.end_task(task)
    return float(loss), total


def run_experiment(args, progress: ProgressBar | None = None, log=print) -> dict:
    """Train and evaluate one run; return the results dictionary (see README for the fields).

    With ``args.checkpoint_dir`` the run is saved after every task, and with
    ``args.resume`` it continues from the last saved task.  On KeyboardInterrupt
    (SIGINT, or SIGTERM as ``main`` maps it) the run stops at once; the
    checkpoint keeps every completed task.
    """
    start = time.perf_counter()
    run = build_run(args)
    progress = progress or ProgressBar()
    n_tasks = run.dataset.N_TASKS
    # Everything per task that the results are made of; a checkpoint stores it as it is.
    history = {"stages_done": 0, "rows_cil": [], "rows_til": [], "collapse": [], "n_steps": 0,
               "train_time_s": 0.0, "wall_time_s": 0.0}
    saved = load_checkpoint(args) if args.checkpoint_dir else None
    if saved is not None:
        restore_run(run, saved)
        history = saved["history"]
        log(f"Resuming from {args.checkpoint_dir}: {history['stages_done']} task(s) already done")
    elif args.resume:
        log(f"No checkpoint in {args.checkpoint_dir} yet: starting from the first task")
    time_before = history["wall_time_s"]
    logger = WandbLogger(args, saved["logger"] if saved else None)
    try:
        for stage, (task, indices) in enumerate(stages(run)):
            if stage < history["stages_done"]:
                continue
            tic = time.perf_counter()
            last_loss, steps = train_stage(run, task, indices, progress, logger)
            check_finite_loss(last_loss, f"task {task + 1} (steps {history['n_steps'] + 1}-"
                                         f"{history['n_steps'] + steps})", args.lr)
            history["train_time_s"] += time.perf_counter() - tic
            history["n_steps"] += steps
            cil, til = evaluate(run, task + 1)
            history["rows_cil"].append(cil)
            history["rows_til"].append(til)
            log(f"Task {task + 1}/{n_tasks}  Class-IL {sum(cil) / len(cil):6.2f}  Task-IL {sum(til) / len(til):6.2f}"
                f"  loss {last_loss:.4f}  per task (Class-IL): {' '.join(f'{a:.1f}' for a in cil)}")
            collapse = task_collapse_metrics(run, task + 1) if args.collapse_metrics else None
            if collapse is not None:
                history["collapse"].append(collapse)
                log(f"  collapse: {collapse_summary(collapse)}")
            history["stages_done"] = stage + 1
            history["wall_time_s"] = time_before + time.perf_counter() - start
            logger.task_done(task, cil, til, collapse)
            if args.checkpoint_dir:
                try:
                    save_checkpoint(args.checkpoint_dir, run, history, logger.state())
                except OSError as exc:
                    raise UserError(f"could not write the checkpoint to {args.checkpoint_dir} after task "
                                    f"{task + 1}: {exc.strerror or exc}; the previous checkpoint there (if any) is "
                                    f"intact: free space or pick another --checkpoint_dir and rerun with "
                                    f"--resume") from None
    except KeyboardInterrupt:
        progress.close()
        logger.finish(exit_code=130)
        if args.checkpoint_dir:
            log(f"Interrupted after {history['stages_done']} completed task(s); the checkpoint in "
                f"{args.checkpoint_dir} keeps them: rerun with --resume to continue")
        raise
    except BaseException:
        logger.finish(exit_code=1)
        raise
    rows_cil, rows_til = history["rows_cil"], history["rows_til"]
    m_cil, m_til = pad_rows(rows_cil, n_tasks), pad_rows(rows_til, n_tasks)
    full = len(rows_cil) == n_tasks
    results = {
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
        "wall_time_s": time_before + time.perf_counter() - start,
        "device": str(torch.device(args.device)) + (f" ({torch.cuda.get_device_name(args.device)})"
                                                    if torch.device(args.device).type == "cuda" else ""),
        "torch_version": torch.__version__,
    }
    logger.finish(results)
    return results
