"""What a trainer does besides its protocol, as callbacks: the protocol and those both trainers use.

Both trainers run in stages - a task for ``main.py``, an epoch for
``main_lt.py`` - and call, for every callback in order: ``on_step`` after
each optimizer step, ``on_stage_end`` after each stage's evaluation (with the
``history`` a checkpoint stores; ``history['stages_done']`` counts the
completed stages), and ``on_run_end`` once, with the results on success
(``exit_code`` 0) or ``None`` (130: interrupted, 1: failed).  A callback that
needs another's output comes after it in the list (collapse metrics before
wandb and the checkpoint, which store them).  ``Progress``, ``Wandb`` and
``Checkpoint`` serve both trainers; ``utils.cl_callbacks`` holds the
continual trainer's own (collapse metrics, per-task wandb rows, anytime
accuracy) and its list, ``longtail.callbacks`` the long-tail one.
"""
from __future__ import annotations

import contextlib
import types
from typing import Callable, Iterator, Optional

from utils.checkpoint import signals_held
from utils.errors import UserError
from utils.progress import ProgressBar
from utils.wandb_logger import WandbLogger


class Callback:
    def on_step(self, run, stage: int, step: int, total: int, loss) -> None:
        """``loss`` is a device tensor: reading it waits for the device, so read it only to show it."""

    def on_stage_end(self, run, stage: int, history: dict) -> None:
        pass

    def on_run_end(self, run, results: Optional[dict], exit_code: int) -> None:
        pass


class Progress(Callback):
    """The progress bar of each stage; ``label(run, stage)`` names the stage ("Task 2/5", "Epoch 7/200")."""

    def __init__(self, bar: ProgressBar, label: Callable[[object, int], str]):
        self.bar, self.label = bar, label

    def on_step(self, run, stage, step, total, loss):
        self.bar.update(self.label(run, stage), step, total, loss)
        if step == total:
            self.bar.close()

    def on_run_end(self, run, results, exit_code):
        if exit_code:
            self.bar.close()




class Wandb(Callback):
    """The training loss every few steps and the final metrics; what a stage logs is the subclass's."""

    def __init__(self, logger: WandbLogger):
        self.logger = logger

    def on_step(self, run, stage, step, total, loss):
        self.logger.train_step(loss)

    def on_run_end(self, run, results, exit_code):
        self.logger.finish(results, exit_code=exit_code) if results else self.logger.finish(exit_code=exit_code)



class Checkpoint(Callback):
    """``--checkpoint_dir``: the run saved after every ``every``-th stage and after the ``last`` one, by
    ``save(directory, run, history, logger_state)``; what an interruption kept is said on the way out.

    ``stage`` names a stage in messages ("task", "epoch").
    """

    def __init__(self, directory: str, save: Callable, logger_state: Callable[[], dict], log, stage: str = "task",
                 done: int = 0, every: int = 1, last: Optional[int] = None):
        self.directory, self.save, self.logger_state, self.log = directory, save, logger_state, log
        self.stage, self.every, self.last = stage, every, last
        self.done = done  # stages the checkpoint holds

    def on_stage_end(self, run, stage, history):
        completed = history["stages_done"]
        if completed % self.every and completed != self.last:
            return
        # A Ctrl-C or SIGTERM during the save is delivered once it is over and counted, so that the
        # message on the way out names what the file holds.
        with signals_held():
            try:
                self.save(self.directory, run, history, self.logger_state())
            except OSError as exc:
                raise UserError(f"could not write the checkpoint to {self.directory} after {self.stage} "
                                f"{stage + 1}: {exc.strerror or exc}; the previous checkpoint there (if any) is "
                                f"intact: free space or pick another --checkpoint_dir and rerun with --resume") from None
            self.done = completed

    def on_run_end(self, run, results, exit_code):
        if exit_code == 130:
            self.log(f"Interrupted after {self.done} completed {self.stage}(s); the checkpoint in {self.directory} "
                     f"keeps them: rerun with --resume to continue")


@contextlib.contextmanager
def reporting_run_end(run, callbacks) -> Iterator[types.SimpleNamespace]:
    """Around a trainer's stages: every callback's ``on_run_end`` is called once however the block ends -
    with ``outcome.results`` (set inside the block) and 0, or with ``None`` and 130 on KeyboardInterrupt,
    1 on any other error (which then propagates)."""
    outcome = types.SimpleNamespace(results=None)
    exit_code = 1
    try:
        yield outcome
        exit_code = 0
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        for callback in callbacks:
            callback.on_run_end(run, outcome.results if exit_code == 0 else None, exit_code)


