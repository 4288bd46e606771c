"""What the trainer does besides the protocol, as callbacks: progress, wandb, collapse metrics, checkpoints.

The trainer calls, for every callback in order: ``on_step`` after each
optimizer step, ``on_task_end`` after each task's evaluation (the task's
accuracies are the last rows of ``history``), and ``on_run_end`` once, with the
results on success (``exit_code`` 0) or ``None`` (130: interrupted, 1: failed).
A callback that needs another's output comes after it in the list
(collapse metrics before wandb and the checkpoint, which store them).
"""
from __future__ import annotations

from typing import Optional

from utils.checkpoint import save_checkpoint
from utils.collapse import summary as collapse_summary, task_collapse_metrics
from utils.errors import UserError
from utils.progress import ProgressBar
from utils.wandb_logger import WandbLogger


class Callback:
    def on_step(self, run, task: int, step: int, total: int, loss) -> None:
        """``loss`` is a device tensor: reading it waits for the device, so read it only to show it."""

    def on_task_end(self, run, task: int, history: dict) -> None:
        pass

    def on_run_end(self, run, results: Optional[dict], exit_code: int) -> None:
        pass


class Progress(Callback):
    def __init__(self, bar: ProgressBar):
        self.bar = bar

    def on_step(self, run, task, step, total, loss):
        self.bar.update(f"Task {task + 1}/{run.dataset.N_TASKS}", step, total, loss)
        if step == total:
            self.bar.close()

    def on_run_end(self, run, results, exit_code):
        if exit_code:
            self.bar.close()


class Collapse(Callback):
    """``--collapse_metrics 1``: neural-collapse metrics of the seen tasks' training data after each task."""

    def __init__(self, log):
        self.log = log

    def on_task_end(self, run, task, history):
        metrics = task_collapse_metrics(run, task + 1)
        history["collapse"].append(metrics)
        self.log(f"  collapse: {collapse_summary(metrics)}")


class Wandb(Callback):
    def __init__(self, logger: WandbLogger):
        self.logger = logger

    def on_step(self, run, task, step, total, loss):
        self.logger.train_step(loss)

    def on_task_end(self, run, task, history):
        collapse = history["collapse"][-1] if run.args.collapse_metrics else None
        self.logger.task_done(task, history["rows_cil"][-1], history["rows_til"][-1], collapse)

    def on_run_end(self, run, results, exit_code):
        self.logger.finish(results, exit_code=exit_code) if results else self.logger.finish(exit_code=exit_code)


class Checkpoint(Callback):
    """``--checkpoint_dir``: the run saved after every task; what an interruption kept is said on the way out."""

    def __init__(self, directory: str, logger: WandbLogger, log, done: int = 0):
        self.directory, self.logger, self.log = directory, logger, log
        self.done = done  # stages the checkpoint holds

    def on_task_end(self, run, task, history):
        try:
            save_checkpoint(self.directory, run, history, self.logger.state())
        except OSError as exc:
            raise UserError(f"could not write the checkpoint to {self.directory} after task {task + 1}: "
                            f"{exc.strerror or exc}; the previous checkpoint there (if any) is intact: free space "
                            f"or pick another --checkpoint_dir and rerun with --resume") from None
        self.done = history["stages_done"]

    def on_run_end(self, run, results, exit_code):
        if exit_code == 130:
            self.log(f"Interrupted after {self.done} completed task(s); the checkpoint in {self.directory} "
                     f"keeps them: rerun with --resume to continue")


def standard_callbacks(args, progress: ProgressBar, log, logger: WandbLogger, stages_done: int = 0) -> list:
    """The callbacks ``main.py`` runs with, in the order their outputs depend on each other."""
    callbacks = [Progress(progress)]
    if args.collapse_metrics:
        callbacks.append(Collapse(log))
    callbacks.append(Wandb(logger))
    if args.checkpoint_dir:
        callbacks.append(Checkpoint(args.checkpoint_dir, logger, log, stages_done))
    return callbacks
