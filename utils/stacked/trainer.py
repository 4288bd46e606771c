"""The stacked trainer: a run's stages for S seeds at once, each seed's outputs those of its single run.

Every seed's ``Run`` is built by ``utils.training.build_run`` with the single
run's arguments (``utils.seeds.seed_args``); a stage's steps are the method's
``observe`` on a ``Stack`` (``utils.stacked.method``); before and after the
steps, and for everything a run records, the single run's own pieces are used
(``start_stage``, ``stage_steps``, ``end_stage``, ``finish_stage``,
``make_results``, the callbacks and ``reporting_run_end``, once per seed).
"""
from __future__ import annotations

import contextlib
import time
from typing import List

import torch

from datasets import get_dataset_class
from models import get_model_class
from models.continual_model import ContinualModel
from utils.callbacks import reporting_run_end
from utils.checkpoint import signals_held
from utils.cl_callbacks import standard_callbacks
from utils.errors import UserError
from utils.progress import ProgressBar
from utils.provenance import provenance
from utils.seeds import seed_args
from utils.stacked.method import Stack
from utils.training import (build_run, end_stage, epoch_batches, evaluate, evaluate_untrained, finish_stage,
                            make_results, resume, stage_steps, stages, start_stage, steps_per_epoch)
from utils.wandb_logger import WandbLogger, wandb_wanted

# The methods whose ``observe`` stacks: it writes its losses with the hooks (``cross_entropy``, ``mse``,
# ``stream_loss``) and calls only what ``Stack`` provides.  Any other method refuses --seeds.
STACKED_METHODS = ("sgd", "er", "der", "derpp")
HEADS = ("fc", "fno", "etf", "orth")
BACKBONES = ("mlp", "resnet18", "resnet18-narrow")  # the ones whose forward only folds seeds into channels


def check_stackable(args, seeds: list) -> None:
    """Refuse, in one line, what the stacked trainer does not do (before anything is built)."""
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 1-10")
    if args.model not in STACKED_METHODS:
        raise UserError(f"--seeds: method {args.model} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(sorted(STACKED_METHODS))})")
    method = get_model_class(args.model)
    if (method.build_optimizer, method.build_scheduler) != (ContinualModel.build_optimizer,
                                                            ContinualModel.build_scheduler):
        raise UserError(f"--seeds: method {args.model} builds its own optimizer or scheduler, which the stacked "
                        f"trainer does not mirror yet; run one process per seed")
    if args.classifier not in HEADS:
        raise UserError(f"--seeds: head {args.classifier} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(HEADS)})")
    if args.backbone not in BACKBONES:
        raise UserError(f"--seeds: backbone {args.backbone} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(BACKBONES)})")
    refusals = [
        (args.compile, "--compile is not supported with stacked runs yet (the stacked step is one larger graph, "
                       "not yet measured); use --compile 0"),
        (wandb_wanted(args), "wandb logs one run per process; use --nowand 1 (each seed's results file "
                             "holds everything) or one process per seed"),
        (getattr(args, "eval_every", None), "--eval_every evaluates in the middle of a task, which a stacked "
                                            "task does not stop for; run one process per seed"),
        (len(seeds) > 1 and args.results_file and "{seed}" not in args.results_file,
         f"--results_file {args.results_file} would hold every seed's results; put {{seed}} in its name"),
    ]
    for refused, why in refusals:
        if refused:
            raise UserError(f"--seeds: {why}")


class _MeanLoss:
    """The seeds' mean loss, computed only when the progress bar reads it (no device work per step)."""

    def __init__(self, losses: torch.Tensor):
        self.losses = losses

    def __float__(self) -> float:
        return float(self.losses.float().mean())


def shared_dataset(args):
    """The benchmark read once, its splits moved to the device and given their tasks once
    (``to_device``, which a domain benchmark uses to make all its domains): every seed's ``build_run``
    then works on the same tensors (64 copies of TinyImageNet would not fit on a GPU)."""
    dataset = get_dataset_class(args.dataset)(args.data_path, rebuild_cache=bool(args.rebuild_cache))
    splits = tuple(split.to(torch.device(args.device)) for split in dataset.load_splits())
    on_device, to_device = {}, dataset.to_device

    def to_device_once(split, device):
        key = (id(split), str(device))  # the splits above live as long as the dataset: ids stay theirs
        if key not in on_device:
            on_device[key] = to_device(split, device)
        return on_device[key]

    # This object only (an instance attribute): build_run asks it for the splits and their device copies.
    dataset.load_splits, dataset.to_device = (lambda: splits), to_device_once
    return dataset


def train_stacked_stage(runs: list, datas: list, progress=None, step_hook=None, first_step: int = 0) -> tuple:
    """``utils.training.train_stage`` for S seeds at once: each seed's ``start_stage``, the epochs of the
    method's ``observe`` on the ``Stack``, then each seed's state copied back and its ``end_stage``.

    Returns each seed's last loss (floats) and the number of optimizer steps taken."""
    args, task = runs[0].args, datas[0].task
    if len({len(d) for d in datas}) > 1:
        raise ValueError(f"seeds to stack have task {task + 1} training sets of different sizes")
    for run, data in zip(runs, datas):
        start_stage(run, data)
    st = Stack(runs)
    total = stage_steps(runs[0], datas[0])
    label = f"Task {task + 1}/{runs[0].dataset.N_TASKS} ({len(runs)} seeds)"
    device = datas[0].device
    losses = torch.zeros(len(runs))
    step = 0
    for epoch in range(args.n_epochs):
        orders = torch.stack([data.indices[torch.randperm(len(data), device=device, generator=run.data_generator)]
                              for run, data in zip(runs, datas)], 1)
        for batch in epoch_batches(orders, args.batch_size, runs[0].min_batch)[:total - step]:
            raw, labels = st.gather(batch)
            losses = st.observe(st.augment(raw), labels, raw)
            step += 1
            if progress is not None:
                progress.update(label, step, total, _MeanLoss(losses))
            if step_hook is not None:
                step_hook(task, step, losses)
        st.end_epoch()
        for run in runs:
            run.model.end_epoch()
        if step == total:
            break
    if progress is not None:
        progress.close()
    st.unstack()
    lasts = losses.tolist()
    for run, data, last in zip(runs, datas, lasts):
        end_stage(run, data, last, first_step, total, who=f"seed {run.args.seed}, ")
    return lasts, total


def run_seeds(args, log=print, progress=None, step_hook=None) -> List[dict]:
    """``main.py --seeds``: ``run_stacked`` over ``args.seeds`` (``utils.entry.run_entry`` checks, locks
    and writes every seed's outputs as its single run's)."""
    return run_stacked(args, args.seeds, log, progress, step_hook)


def run_stacked(args, seeds: list, log=print, progress=None, step_hook=None) -> List[dict]:
    """Train and evaluate the runs of ``args`` with each of ``seeds`` as one stacked model; return, per
    seed, the results dictionary ``utils.training.run_experiment`` returns for that seed.

    ``step_hook(task, step, losses)`` sees each step's per-seed losses (a detached (S,) tensor).  With
    ``--checkpoint_dir`` each seed keeps a single run's checkpoint in its own directory (``seed_args``)
    and continues from it; seeds that are at different tasks train together from where each one is.
    ``train_time_s`` and ``wall_time_s`` are those of the whole stacked run, shared by its seeds.
    """
    seeds = list(seeds)
    check_stackable(args, seeds)
    start = time.perf_counter()
    origin = provenance()
    dataset = shared_dataset(args)
    runs = [build_run(seed_args(args, seed), dataset) for seed in seeds]
    logs = [lambda line, seed=seed: log(f"seed {seed}: {line}") for seed in seeds]
    saved = [resume(run, seed_log) for run, seed_log in zip(runs, logs)]
    histories = [history for history, _ in saved]
    hooks = [standard_callbacks(run.args, ProgressBar(enabled=False), seed_log, WandbLogger(run.args, state), history,
                                evaluate)
             for run, seed_log, (history, state) in zip(runs, logs, saved)]
    elapsed_before = [history["wall_time_s"] for history in histories]
    plans = [stages(run)[:args.n_tasks] for run in runs]
    bar = progress or ProgressBar()
    with contextlib.ExitStack() as every:
        outcomes = [every.enter_context(reporting_run_end(run, run_hooks)) for run, run_hooks in zip(runs, hooks)]
        for run, plan, history in zip(runs, plans, histories):
            evaluate_untrained(run, len(plan), history)
        for stage in range(len(plans[0])):
            todo = [i for i, history in enumerate(histories) if history["stages_done"] <= stage]
            if not todo:
                continue
            tic = time.perf_counter()
            bar.start(steps_per_epoch(runs[todo[0]], plans[todo[0]][stage]), args.n_epochs)
            lasts, steps = train_stacked_stage([runs[i] for i in todo], [plans[i][stage] for i in todo], bar,
                                               step_hook, histories[todo[0]]["n_steps"])
            train_s = time.perf_counter() - tic
            with signals_held():  # every seed's checkpoint of this task is written, or none is interrupted
                for i, last in zip(todo, lasts):
                    history, data = histories[i], plans[i][stage]
                    history["train_time_s"] += train_s
                    history["n_steps"] += steps
                    finish_stage(runs[i], data, stage, len(plans[i]), history, last, logs[i])
                    history["wall_time_s"] = elapsed_before[i] + time.perf_counter() - start
                    for hook in hooks[i]:
                        hook.on_stage_end(runs[i], data.task, history)
        wall = time.perf_counter() - start
        for outcome, run, history, before in zip(outcomes, runs, histories, elapsed_before):
            outcome.results = make_results(run, history, before + wall, origin)
    return [outcome.results for outcome in outcomes]
