"""The long-tail trainer's callbacks: the core's progress, wandb and checkpoint callbacks, by epoch.

Rank 0 draws the progress bar and logs to wandb; every process takes part in
saving a checkpoint (each hands over its random streams), which rank 0 writes.
"""
from __future__ import annotations

from typing import Optional

from longtail.checkpoint import save_checkpoint
from longtail.metrics import GROUP_KEYS, long_tail_metrics
from utils.callbacks import Checkpoint, Progress, Wandb
from utils.progress import ProgressBar
from utils.wandb_logger import WandbLogger


def epoch_label(run, epoch: int) -> str:
    return f"Epoch {epoch + 1}/{run.args.n_epochs}"


class EpochWandbLogger(WandbLogger):
    """``main.py``'s wandb logger (start-up, failures, training loss, summary) with an epoch axis."""

    def _start(self, args) -> None:
        super()._start(args)
        self.run.define_metric("epoch")
        for prefix in ("epoch_train", "test"):
            self.run.define_metric(f"{prefix}/*", step_metric="epoch")

    def epoch_done(self, epoch: int, row: dict) -> None:
        """Log ``row`` as the values of epoch ``epoch`` (0-based)."""
        if self.run is not None:
            self._guard("log", lambda: self.run.log({"epoch": epoch + 1, **row}))


class EpochWandb(Wandb):
    """After each epoch: its training loss and learning rate, and the test accuracies when it was evaluated."""

    def on_stage_end(self, run, epoch, history):
        row = {"epoch_train/loss": history["train_loss"], "epoch_train/lr": history["lr"]}
        if history["evaluated"] and history["evaluated"][-1] == epoch + 1:
            metrics = long_tail_metrics(history["hits"][-1], history["counts"], run.groups)
            row.update({f"test/{key}": metrics[key] for key in GROUP_KEYS if metrics[key] is not None})
        self.logger.epoch_done(epoch, row)


def long_tail_callbacks(run, progress: Optional[ProgressBar], log, logger_state: Optional[dict],
                        epochs_done: int = 0) -> list:
    """The callbacks ``main_lt.py`` runs with: progress and wandb on rank 0, checkpoints on every process."""
    args, callbacks = run.args, []
    logger = EpochWandbLogger(args, logger_state) if run.procs.main else None
    if logger is not None:
        callbacks += [Progress(progress or ProgressBar(), epoch_label), EpochWandb(logger)]
    if args.checkpoint_dir:
        callbacks.append(Checkpoint(args.checkpoint_dir, save_checkpoint, logger.state if logger else dict, log,
                                    "epoch", epochs_done, args.checkpoint_every, args.n_epochs))
    return callbacks
