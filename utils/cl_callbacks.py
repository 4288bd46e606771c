"""The continual trainer's own callbacks (``utils.callbacks`` holds the protocol and the shared ones):
collapse metrics and per-task wandb rows after each task, anytime accuracy (``--eval_every``), the
validation metrics in wandb, and ``standard_callbacks``, the list ``utils.training.run_experiment`` and
the stacked trainer run with."""
from __future__ import annotations

from utils.callbacks import Callback, Checkpoint, Progress, Wandb
from utils.checkpoint import save_checkpoint
from utils.collapse import summary as collapse_summary, task_collapse_metrics
from utils.progress import ProgressBar
from utils.wandb_logger import WandbLogger


def task_label(run, task: int) -> str:
    return f"Task {task + 1}/{run.dataset.N_TASKS}"


class Collapse(Callback):
    """``--collapse_metrics 1``: neural-collapse metrics of the seen tasks' training data after each task."""

    def __init__(self, log):
        self.log = log

    def on_stage_end(self, run, task, history):
        metrics = task_collapse_metrics(run, task + 1)
        history["collapse"].append(metrics)
        self.log(f"  collapse: {collapse_summary(metrics)}")


class TaskWandb(Wandb):
    """After each task: its Class-IL and Task-IL rows (and collapse metrics when computed)."""

    def on_stage_end(self, run, task, history):
        collapse = history["collapse"][-1] if run.args.collapse_metrics else None
        self.logger.task_done(task, history["rows_cil"][-1], history["rows_til"][-1], collapse)


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
        logger.define_metric("anytime/*", "train/step")

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
        self.logger.log(row)


class ProtocolWandb(Callback):
    """After each task the mean validation accuracies (``validation/``, with ``--validation``); at the end
    the final validation accuracies in the run summary (what a sweep selects on), before the standard
    wandb callback closes the run.  Forward transfer and average incremental accuracy reach the summary
    with the other top-level numbers of the results."""

    def __init__(self, logger: WandbLogger):
        self.logger = logger
        logger.define_metric("validation/*", "task")

    def on_stage_end(self, run, task, history):
        if run.validation is not None:
            row = {"task": task + 1, "validation/class_il/mean": _mean(history["val_rows_cil"][-1])}
            if not run.dataset.DOMAIN_IL:
                row["validation/task_il/mean"] = _mean(history["val_rows_til"][-1])
            self.logger.log(row)

    def on_run_end(self, run, results, exit_code):
        validation = (results or {}).get("validation")
        if validation:
            self.logger.update_summary({f"validation/{k}": validation[k] for k in ("class_il", "task_il")
                                        if validation[k] is not None})


def standard_callbacks(args, progress: ProgressBar, log, logger: WandbLogger, history: dict, evaluate) -> list:
    """The callbacks ``main.py`` runs with, in the order their outputs depend on each other (``evaluate``:
    the trainer's evaluation, which ``--eval_every`` calls)."""
    callbacks = [ProtocolWandb(logger), Progress(progress, task_label)]
    if args.collapse_metrics:
        callbacks.append(Collapse(log))
    callbacks.append(TaskWandb(logger))
    if args.checkpoint_dir:
        callbacks.append(Checkpoint(args.checkpoint_dir, save_checkpoint, logger.state, log, "task",
                                    history["stages_done"]))
    if args.eval_every:
        callbacks.append(AnytimeAccuracy(args.eval_every, evaluate, history, logger))
    return callbacks
