"""The continual-learning loop: tasks in order, evaluation after each, metrics at the end."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from backbone.heads import build_network
from datasets import get_dataset_class
from datasets.utils.continual_dataset import (ContinualDataset, Split, class_permutation, first_per_task, relabel,
                                              stratified_holdout)
from datasets.utils.transforms import DeviceTransform
from models import get_model_class
from models.continual_model import CUDA_GRAPH_MODES, ContinualModel, Setting
from utils.buffer import check_buffer_fits
from utils.callbacks import reporting_run_end
from utils.checkpoint import load_checkpoint, restore_run
from utils.cl_callbacks import standard_callbacks
from utils.errors import UserError
from utils.guards import check_finite_loss
from utils.losses import mask_other_tasks
from utils.metrics import (average_anytime, average_incremental, backward_transfer, final_average, forgetting,
                           forward_transfer, pad_rows)
from utils.progress import ProgressBar
from utils.provenance import provenance, start_time
from utils.seeding import make_generator, seed_everything
from utils.stream_protocol import stage_passes, stage_steps as fitting_steps, stream_splits, task_il_defined
from utils.wandb_logger import WandbLogger

EVAL_BATCH = 1024  # at most this many test images per forward pass (small inputs: MNIST, digits)
EVAL_PIXELS = 2 ** 18  # and at most this many pixels per batch: 256 images at 32x32, 64 at 64x64
DEBUG_EVAL_PER_TASK = 100  # --debug_mode: the test (and validation) samples kept per task


def eval_batch_size(input_shape) -> int:
    """Evaluation batches bounded in images and in pixels, so that evaluation activations stay the
    size of a training step's (the CPU host-memory budget on TinyImageNet)."""
    return max(1, min(EVAL_BATCH, EVAL_PIXELS // math.prod(input_shape[1:])))


@dataclass
class Run:
    """Everything a run works on, built by ``build_run``.  Every split holds each sample's task
    (``Split.task``): its label's task, or its domain on a domain-incremental benchmark."""
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
    validation: Optional[Split] = None  # --validation: held out of ``train``
    class_order: Optional[list] = None  # --class_order: label l is original class class_order[l]
    stream: dict = field(default_factory=dict)  # realised noise rate and blurry shares (utils.stream_protocol)
    data: dict = field(default_factory=dict)  # where the data came from (ContinualDataset.provenance)


def prepare_splits(args, dataset: ContinualDataset, device: torch.device) -> tuple:
    """(train, validation or None, test, class permutation or None) on ``device``, every sample with its task.

    ``--class_order`` renames the classes before the tasks are cut (task t then
    holds the original classes ``perm[tC:(t+1)C]``); ``--validation`` holds out a
    share of every (task, class) of the training split, drawn from ``--seed``;
    ``--debug_mode`` keeps the first ``DEBUG_EVAL_PER_TASK`` evaluation samples of each task.
    """
    train, test = dataset.load_splits()
    perm = class_permutation(dataset.num_classes, args.class_order)
    if perm is not None:
        train, test = relabel(train, perm), relabel(test, perm)
    train, test = dataset.to_device(train, device), dataset.to_device(test, device)
    validation = None
    if args.validation:
        kept, held = stratified_holdout(train.task * dataset.num_classes + train.y, args.validation, args.seed)
        train, validation = train.subset(kept.to(device)), train.subset(held.to(device))
    if args.debug_mode:
        test = test.subset(first_per_task(test.task, DEBUG_EVAL_PER_TASK))
        if validation is not None:
            validation = validation.subset(first_per_task(validation.task, DEBUG_EVAL_PER_TASK))
    return train, validation, test, perm


def build_run(args, dataset: ContinualDataset | None = None) -> Run:
    """Build a run; ``dataset`` replaces the one named by ``args.dataset`` (the benchmarks pass synthetic data)."""
    device = torch.device(args.device)
    if device.type == "cpu" and args.num_threads:
        torch.set_num_threads(args.num_threads)
    if device.type == "cuda":  # a run's shapes are few and fixed: let cuDNN pick the fastest kernels once
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = bool(args.deterministic)
    seed_everything(args.seed)
    if dataset is None:
        dataset = get_dataset_class(args.dataset)(args.data_path, rebuild_cache=bool(args.rebuild_cache),
                                                  synthetic=bool(getattr(args, "synthetic", 0)))
    # Normalisation constants on the device once: a per-batch host-to-device copy would synchronise.
    transform = dataset.TRANSFORM.to(device)
    train, validation, test, perm = prepare_splits(args, dataset, device)
    data = dataset.provenance()
    if data["warning"]:
        print(f"warning: {data['warning']}", flush=True)
    train, stream = stream_splits(args, dataset, train, perm)  # --noise_rate, --blurry (no-ops by default)
    if getattr(args, "buffer_size", 0):
        # inputs as stored, an int64 label and float32 logits over every class (the most a method stores)
        entry = train.x[0].numel() * train.x.element_size() + 8 + 4 * dataset.num_classes
        check_buffer_fits(args.buffer_size, entry, device)
    net = build_network(args, dataset.INPUT_SHAPE, dataset.num_classes).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    task_of_class = dataset.task_of_class().to(device)
    augment_generator = make_generator(args.seed, "augmentation", device)
    setting = Setting(device=device, task_of_class=task_of_class,
                      augment=lambda x: transform.train(x, augment_generator),
                      buffer_generator=make_generator(args.seed, "buffer", device),
                      lr_milestones=dataset.LR_MILESTONES, lr_gamma=dataset.LR_GAMMA,
                      n_tasks=dataset.N_TASKS, input_shape=tuple(dataset.INPUT_SHAPE), domain_il=dataset.DOMAIN_IL,
                      transform=transform, eval_batch_size=eval_batch_size(dataset.INPUT_SHAPE))
    model = get_model_class(args.model)(net, args, setting)
    if args.compile:
        model.net = torch.compile(model.net, mode=args.compile)
    return Run(args, dataset, model, train, test, task_of_class,
               make_generator(args.seed, "data-order", device), augment_generator, transform,
               min_batch=2 if model.bn_layers else 1, validation=validation,
               class_order=None if perm is None else perm.tolist(), stream=stream, data=data)


@torch.no_grad()
def evaluate(run: Run, n_seen_tasks: int, split: Optional[Split] = None, first_task: int = 0):
    """Class-IL and Task-IL accuracy (percent) on each of the tasks ``first_task .. n_seen_tasks - 1`` of
    ``split`` (default: the test split).

    Class-IL takes the argmax over all classes of the benchmark (the authors'
    protocol); Task-IL takes it over the sample's own task's classes only, and is
    ``None`` on a domain-incremental benchmark, where every task holds every class,
    and in a task-free run (``task_il_defined``).
    """
    model, split, dataset = run.model, run.test if split is None else split, run.dataset
    was_training = model.training
    model.eval()
    n_tasks = n_seen_tasks - first_task
    task_il = task_il_defined(run.args, dataset)
    chosen = torch.nonzero((split.task >= first_task) & (split.task < n_seen_tasks)).flatten()  # no other task's
    hits_cil = torch.zeros(n_tasks, device=split.y.device)
    hits_til = torch.zeros(n_tasks, device=split.y.device)
    counts = torch.bincount(split.task[chosen] - first_task, minlength=n_tasks).float()
    for idx in chosen.split(eval_batch_size(dataset.INPUT_SHAPE)):
        x, y, t = split.x[idx], split.y[idx], split.task[idx] - first_task
        with model.autocast():
            logits = model(run.transform.test(x)).float()
        cil = logits.argmax(1) == y
        hits_cil += torch.bincount(t, weights=cil.float(), minlength=n_tasks)
        if task_il:
            til = mask_other_tasks(logits, y, run.task_of_class).argmax(1) == y
            hits_til += torch.bincount(t, weights=til.float(), minlength=n_tasks)
    model.train(was_training)
    return (100 * hits_cil / counts).tolist(), (100 * hits_til / counts).tolist() if task_il else None


@dataclass
class TaskData:
    """A task's training split as a method sees it at ``begin_task`` / ``end_task``.

    ``x`` are the raw (non-augmented) inputs on the run's device and ``y`` their
    labels, gathered from the run's training split (``source_x``, ``source_y``)
    at ``indices`` when they are read: nothing is copied up front, so a run holds
    one copy of its data, and the seeds of a stacked run share theirs.
    ``generator`` is the run's data-order stream (draws from it are part of the
    run's reproducible randomness); ``augment`` maps raw inputs to augmented
    network inputs, ``prepare`` to non-augmented network inputs.
    """
    task: int
    source_x: torch.Tensor  # what ``indices`` index: the run's training split
    source_y: torch.Tensor
    indices: torch.Tensor
    generator: torch.Generator
    augment: Callable[[torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor]

    @property
    def x(self) -> torch.Tensor:
        return self.source_x[self.indices]

    @property
    def y(self) -> torch.Tensor:
        return self.source_y[self.indices]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, rows: torch.Tensor) -> tuple:
        """(raw inputs, labels) of the task's samples ``rows`` (positions within the task), one gather each."""
        chosen = self.indices[rows]
        return self.source_x[chosen], self.source_y[chosen]

    def batches(self, batch_size: int):
        """(raw inputs, labels) in order, ``batch_size`` at a time (for a pass over the task at its end)."""
        for idx in self.indices.split(batch_size):
            yield self.source_x[idx], self.source_y[idx]


def task_data(run: Run, task: int, indices: torch.Tensor) -> TaskData:
    return TaskData(task, run.train.x, run.train.y, indices, run.data_generator, run.model.setting.augment,
                    run.transform.test)


def stages(run: Run) -> List[TaskData]:
    """The training data of each stage: one per task, or a single one (every task) for JOINT models."""
    per_task = [torch.nonzero(run.train.task == t).flatten() for t in range(run.dataset.N_TASKS)]
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


def steps_per_epoch(run: Run, data: TaskData) -> int:
    return len(epoch_batches(torch.arange(len(data)), run.args.batch_size, run.min_batch))


def start_stage(run: Run, data: TaskData) -> None:
    """Before a stage's first step: training mode, a fresh optimizer and scheduler (the method builds
    both), ``begin_task``.  ``--task_free 1``: no ``begin_task``, and one optimizer for the whole stream
    (built before the first task, or restored by ``--resume``), so nothing tells the method where a task ends."""
    boundaries = not run.args.task_free
    run.model.train()
    if boundaries or run.model.opt is None:
        run.model.prepare_task(data.task if boundaries else 0)
    if boundaries:
        run.model.begin_task(data.task, data)


def stage_steps(run: Run, data: TaskData) -> int:
    """The optimizer steps a stage takes: ``--n_epochs`` passes over its batches or ``--n_iters`` steps
    (``--fitting_mode``), at most ``--max_steps_per_task``; none for a stage the method fits in closed form
    at its end (``trains_on``)."""
    return fitting_steps(run.args, steps_per_epoch(run, data)) if run.model.trains_on(data.task) else 0


def end_stage(run: Run, data: TaskData, last_loss: float, first_step: int, total: int, who: str = "") -> None:
    """After a stage's last step: a check that the loss is still finite (``who`` names the run in the
    message, e.g. a stacked seed), then ``end_task`` (none with ``--task_free 1``)."""
    check_finite_loss(last_loss, f"{who}task {data.task + 1} (steps {first_step + 1}-{first_step + total})",
                      run.args.lr)
    if not run.args.task_free:
        run.model.end_task(data.task, data)


def train_stage(run: Run, data: TaskData, callbacks=(), first_step: int = 0) -> tuple:
    """``start_stage``, passes of ``observe`` over the task's data in a new random order each (``stage_steps``
    steps), ``end_stage``.

    Returns the last batch's loss (a float) and the number of optimizer steps taken."""
    args, model, train, task = run.args, run.model, run.train, data.task
    start_stage(run, data)
    total = stage_steps(run, data)
    graphs = args.compile in CUDA_GRAPH_MODES
    loss = torch.zeros(())
    step = 0
    while step < total:  # one pass per round; the scheduler counts passes as epochs
        order = data.indices[torch.randperm(len(data), device=data.device, generator=run.data_generator)]
        for batch in epoch_batches(order, args.batch_size, run.min_batch)[:total - step]:
            if graphs:  # a new step: outputs of the previous step's graph replays may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            raw, labels = train.x[batch], train.y[batch]
            loss = model.observe(run.transform.train(raw, run.augment_generator), labels, raw)
            step += 1
            for callback in callbacks:
                callback.on_step(run, task, step, total, loss)
        model.end_epoch()
    last = float(loss)
    end_stage(run, data, last, first_step, total)
    return last, total


def new_history(run: Run) -> dict:
    """Everything per task that the results are made of; a checkpoint stores it as it is.

    ``rows_*``: accuracies on the tasks seen so far after each stage (test split;
    ``val_rows_*`` on the validation split); ``next_*``: after each stage but the
    last, the accuracy on the next task and ``random_init_*`` on every task before
    training (forward transfer); ``anytime``: ``--eval_every``'s evaluations."""
    return {"stages_done": 0, "rows_cil": [], "rows_til": [], "collapse": [], "n_steps": 0,
            "train_time_s": 0.0, "wall_time_s": 0.0, "start_time": start_time(), "class_order": run.class_order,
            "val_rows_cil": [], "val_rows_til": [], "next_cil": [], "next_til": [],
            "random_init_cil": None, "random_init_til": None, "anytime": []}


def resume(run: Run, log) -> tuple:
    """(history, wandb logger state) from ``--checkpoint_dir`` when it holds a checkpoint, else fresh ones."""
    args = run.args
    saved = load_checkpoint(args) if args.checkpoint_dir else None
    if saved is None:
        if args.resume:
            log(f"No checkpoint in {args.checkpoint_dir} yet: starting from the first task")
        return new_history(run), None
    restore_run(run, saved)
    history = {**new_history(run), **saved["history"]}  # a checkpoint written before a field existed lacks it
    if history["class_order"] != run.class_order:
        raise UserError(f"--resume: the checkpoint in {args.checkpoint_dir} was trained with the class order "
                        f"{history['class_order']}, this run draws {run.class_order} for --class_order "
                        f"{args.class_order}; resume with the program version that started it")
    log(f"Resuming from {args.checkpoint_dir}: {history['stages_done']} task(s) already done")
    return history, saved["logger"]


def mean(row: Optional[list]) -> Optional[float]:
    return None if row is None else sum(row) / len(row)


def task_line(run: Run, task: int, history: dict, last_loss: float) -> str:
    """The log line of a finished task: mean accuracies on the seen tasks, the loss, Class-IL per task."""
    cil, til = history["rows_cil"][-1], history["rows_til"][-1]
    text = f"Task {task + 1}/{run.dataset.N_TASKS}  Class-IL {mean(cil):6.2f}  "
    text += f"Task-IL {mean(til):6.2f}  " if task_il_defined(run.args, run.dataset) else ""
    if run.validation is not None:
        text += f"validation Class-IL {mean(history['val_rows_cil'][-1]):6.2f}  "
    return text + f"loss {last_loss:.4f}  per task (Class-IL): {' '.join(f'{a:.1f}' for a in cil)}"


def evaluate_untrained(run: Run, n_stages: int, history: dict) -> None:
    """For forward transfer: every task the run will learn, evaluated once before any training (a run that
    resumes has done it; JOINT, one stage, has no next task to transfer to)."""
    if n_stages > 1 and history["stages_done"] == 0:
        history["random_init_cil"], history["random_init_til"] = evaluate(run, n_stages)


def finish_stage(run: Run, data: TaskData, stage: int, n_stages: int, history: dict, last_loss: float, log) -> None:
    """After a stage's training, what a run records: its evaluations (test, validation, and the next task
    for forward transfer when there is one), ``stages_done``, and the task's log line."""
    cil, til = evaluate(run, data.task + 1)
    history["rows_cil"].append(cil)
    history["rows_til"].append(cil if til is None else til)  # domain-IL: no Task-IL (results say null)
    if run.validation is not None:
        cil, til = evaluate(run, data.task + 1, run.validation)
        history["val_rows_cil"].append(cil)
        history["val_rows_til"].append(cil if til is None else til)
    if stage + 1 < n_stages:  # forward transfer needs a next task (JOINT has one stage)
        cil, til = evaluate(run, data.task + 2, first_task=data.task + 1)
        history["next_cil"].append(cil[0])
        history["next_til"].append(None if til is None else til[0])
    history["stages_done"] = stage + 1
    log(task_line(run, data.task, history, last_loss))


def run_experiment(args, progress: ProgressBar | None = None, log=print, callbacks=()) -> dict:
    """Train and evaluate one run; return the results dictionary (see README for the fields).

    The protocol: every stage (task) in order - the first ``--n_tasks`` - trained
    and then evaluated on the tasks seen so far (test split, and validation split
    with ``--validation``); the callbacks (protocol metrics to wandb, progress,
    collapse metrics, wandb, checkpoints, ``--eval_every``, then ``callbacks``) do
    everything else.  For forward transfer the network is also evaluated once
    before training on every task it will learn, and after each task but the last
    on the next task only.  With ``--checkpoint_dir`` the run continues from its
    last saved task.  On KeyboardInterrupt (SIGINT, or SIGTERM as ``main`` maps
    it) the run stops at once; the checkpoint keeps every completed task.
    """
    start = time.perf_counter()
    origin = provenance()
    run = build_run(args)
    history, logger_state = resume(run, log)
    elapsed_before = history["wall_time_s"]
    bar = progress or ProgressBar()
    logger = WandbLogger(args, logger_state)
    hooks = standard_callbacks(args, bar, log, logger, history, evaluate) + list(callbacks)
    plan = stages(run)[:args.n_tasks]
    with reporting_run_end(run, hooks) as outcome:
        evaluate_untrained(run, len(plan), history)
        for stage, data in enumerate(plan):
            if stage < history["stages_done"]:
                continue
            tic = time.perf_counter()
            per_pass = steps_per_epoch(run, data)
            bar.start(per_pass, stage_passes(args, per_pass))
            last_loss, steps = train_stage(run, data, hooks, history["n_steps"])
            history["train_time_s"] += time.perf_counter() - tic
            history["n_steps"] += steps
            finish_stage(run, data, stage, len(plan), history, last_loss, log)
            history["wall_time_s"] = elapsed_before + time.perf_counter() - start
            for hook in hooks:
                hook.on_stage_end(run, data.task, history)
        outcome.results = make_results(run, history, elapsed_before + time.perf_counter() - start, origin)
    return outcome.results


def data_fields(run: Run) -> dict:
    """The results' ``data``: the source (``ContinualDataset.provenance``) and the samples of every task the
    run trained and was tested on (after --validation and --debug_mode took theirs)."""
    per_task = lambda split: torch.bincount(split.task, minlength=run.dataset.N_TASKS).tolist()
    return {**run.data, "train_per_task": per_task(run.train), "test_per_task": per_task(run.test)}


def is_partial(args, n_tasks: int) -> bool:
    """A run shortened on purpose (``--debug_mode``, ``--max_steps_per_task``, ``--n_tasks`` below the
    benchmark's): its numbers are not the protocol's, so summaries keep it apart."""
    return bool(args.debug_mode or getattr(args, "synthetic", 0) or args.max_steps_per_task is not None
                or (args.n_tasks is not None and args.n_tasks < n_tasks))


def accuracy_fields(rows_cil: list, rows_til: Optional[list], n_tasks: int) -> dict:
    """The final accuracies and accuracy matrices of one split (Task-IL ``None`` on domain-IL benchmarks)."""
    m_cil = pad_rows(rows_cil, n_tasks)
    m_til = None if rows_til is None else pad_rows(rows_til, n_tasks)
    return {"class_il": final_average(m_cil), "task_il": None if m_til is None else final_average(m_til),
            "acc_matrix_class_il": m_cil, "acc_matrix_task_il": m_til}


TEST_FIELDS = ["class_il", "task_il", "acc_matrix_class_il", "acc_matrix_task_il", "forgetting_class_il",
               "forgetting_task_il", "bwt_class_il", "bwt_task_il", "fwt_class_il", "fwt_task_il",
               "avg_incremental_class_il", "avg_incremental_task_il", "random_init_class_il", "random_init_task_il",
               "acc_next_task_class_il", "acc_next_task_task_il", "anytime", "aauc_class_il", "aauc_task_il"]


def make_results(run: Run, history: dict, wall_time_s: float, origin: Optional[dict] = None) -> dict:
    args, n_tasks, no_task_il = run.args, run.dataset.N_TASKS, not task_il_defined(run.args, run.dataset)
    test = accuracy_fields(history["rows_cil"], None if no_task_il else history["rows_til"], n_tasks)
    m_cil, m_til = test["acc_matrix_class_il"], test["acc_matrix_task_il"]
    full = len(history["rows_cil"]) == n_tasks
    device = torch.device(args.device)
    random_cil, random_til = history["random_init_cil"], history["random_init_til"]
    validation = None
    if run.validation is not None:
        validation = accuracy_fields(history["val_rows_cil"], None if no_task_il else history["val_rows_til"], n_tasks)
    return {
        "args": vars(args),
        "setting": "domain-il" if run.dataset.DOMAIN_IL else "class-il",
        **test,
        "forgetting_class_il": forgetting(m_cil) if full else None,
        "forgetting_task_il": forgetting(m_til) if full and m_til else None,
        "bwt_class_il": backward_transfer(m_cil) if full else None,
        "bwt_task_il": backward_transfer(m_til) if full and m_til else None,
        "fwt_class_il": forward_transfer(history["next_cil"], random_cil) if random_cil else None,
        "fwt_task_il": forward_transfer(history["next_til"], random_til) if random_til else None,
        "avg_incremental_class_il": average_incremental(history["rows_cil"]),
        "avg_incremental_task_il": None if no_task_il else average_incremental(history["rows_til"]),
        "random_init_class_il": random_cil,
        "random_init_task_il": random_til,
        "acc_next_task_class_il": history["next_cil"],
        "acc_next_task_task_il": None if no_task_il else history["next_til"],
        "anytime": history["anytime"] if args.eval_every else None,
        "aauc_class_il": average_anytime(history["anytime"]) if args.eval_every else None,
        "aauc_task_il": average_anytime(history["anytime"], "task_il") if args.eval_every else None,
        **run.stream,  # realised_noise_rate, blurry_share (null when off)
        "validation": validation,
        "splits": {"headline": "test", "on_test": TEST_FIELDS, "on_validation": ["validation"] if validation else [],
                   "samples": {"train": len(run.train.y), "validation": 0 if run.validation is None else
                               len(run.validation.y), "test": len(run.test.y)}},
        "class_order": history["class_order"],
        "data": data_fields(run),
        "partial": is_partial(args, n_tasks),
        "n_steps": history["n_steps"],
        "train_time_s": history["train_time_s"],
        "collapse": history["collapse"] if args.collapse_metrics else None,
        "wall_time_s": wall_time_s,
        "start_time": history["start_time"],
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch_version": torch.__version__,
        **(origin or {}),
    }
