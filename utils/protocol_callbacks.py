"""Callbacks of the continual trainer's protocol extras: anytime accuracy (``--eval_every``) and the
validation / transfer metrics in wandb.  ``utils.training.run_experiment`` adds them to its list."""
from __future__ import annotations

from utils.callbacks import Callback
from utils.wandb_logger import WandbLogger


def wandb_log(logger: WandbLogger, row: dict) -> None:
    """Log ``row`` to wandb when logging is on; a failure warns once and turns logging off (the logger's rule)."""
    if logger.active:
        logger._guard("log", lambda: logger.run.log(row))


def wandb_define(logger: WandbLogger, pattern: str, step_metric: str) -> None:
    if logger.active:
        logger._guard("log", lambda: logger.run.define_metric(pattern, step_metric=step_metric))


def _mean(row):
    return None if row is None else sum(row) / len(row)


class AnytimeAccuracy(Callback):
    """``--eval_every K``: every K optimizer steps of a task, Class-IL and Task-IL on the test data of the
    tasks seen so far (the current one included), appended to ``history['anytime']`` as
    ``{task, step, class_il, task_il, class_il_per_task}`` (``step`` counted within the task) and logged
    to wandb under ``anytime/`` against the run's step.  Evaluation does not change training: the
    network is put back in training mode and no random stream is drawn from."""

    def __init__(self, every: int, evaluate, history: dict, logger: WandbLogger):
        self.every, self.evaluate, self.history, self.logger = every, evaluate, history, logger
        wandb_define(logger, "anytime/*", "train/step")

    def on_step(self, run, task, step, total, loss):
        if step % self.every:
            return
        cil, til = self.evaluate(run, task + 1)
        entry = {"task": task + 1, "step": step, "class_il": _mean(cil), "task_il": _mean(til),
                 "class_il_per_task": cil}
        self.history["anytime"].append(entry)
        row = {"anytime/class_il": entry["class_il"], "anytime/task": task + 1, "train/step": self.logger.step}
        if til is not None:
            row["anytime/task_il"] = entry["task_il"]
        wandb_log(self.logger, row)


class ProtocolWandb(Callback):
    """After each task the mean validation accuracies (``validation/``, with ``--validation``); at the end
    the final validation accuracies in the run summary (what a sweep selects on), before the standard
    wandb callback closes the run.  Forward transfer and average incremental accuracy reach the summary
    with the other top-level numbers of the results."""

    def __init__(self, logger: WandbLogger):
        self.logger = logger
        wandb_define(logger, "validation/*", "task")

    def on_stage_end(self, run, task, history):
        if run.validation is not None:
            row = {"task": task + 1, "validation/class_il/mean": _mean(history["val_rows_cil"][-1])}
            if not run.dataset.DOMAIN_IL:
                row["validation/task_il/mean"] = _mean(history["val_rows_til"][-1])
            wandb_log(self.logger, row)

    def on_run_end(self, run, results, exit_code):
        validation = (results or {}).get("validation")
        if validation and self.logger.active:
            final = {f"validation/{k}": validation[k] for k in ("class_il", "task_il") if validation[k] is not None}
            self.logger._guard("summary", lambda: self.logger.run.summary.update(final))
