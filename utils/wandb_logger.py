"""Weights & Biases logging that can never stop a run.

Logging is on when a project is known (``--wandb_project`` or the
``WANDB_PROJECT`` variable that wandb agents set) and neither ``--nowand 1``
nor ``WANDB_MODE=disabled`` turns it off; ``WANDB_MODE=offline`` writes the run
to disk for a later ``wandb sync``.  wandb is imported only then.  Any failure
(wandb missing, not logged in, no network, a service error) prints one warning
and turns logging off for the rest of the run; training and the results file
are unaffected.

wandb waits at most ``INIT_TIMEOUT_S`` seconds for its run to start (its own
default is 90 s, which a machine without network would spend before training
even begins); the ``WANDB_INIT_TIMEOUT`` variable sets another limit.

Logged: the full config; the training loss every ``loss_every`` optimizer
steps (reading it waits for the device, so never at every step); after every
task the per-task and mean Class-IL and Task-IL accuracies; at the end the
final metrics in the run summary.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

LOSS_EVERY = 50
RESULTS_KEY = "results_json"  # the run summary's copy of the results file (utils.summarize --wandb reads it)
INTERRUPTED = 130  # the exit code of a run stopped by SIGTERM / Ctrl-C with its checkpoint kept
INIT_TIMEOUT_S = 10.0
INIT_TIMEOUT_ENV = "WANDB_INIT_TIMEOUT"  # wandb's own variable for the same setting


def init_timeout() -> float:
    """Seconds wandb may take to start a run: ``WANDB_INIT_TIMEOUT`` when set, else ``INIT_TIMEOUT_S``."""
    text = os.environ.get(INIT_TIMEOUT_ENV, "").strip()
    if not text:
        return INIT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise ValueError(f"{INIT_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def one_line(exc: Exception) -> str:
    """The first non-empty line of an error message (wandb's span several, with code to paste)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""


def wandb_wanted(args) -> bool:
    return (not args.nowand and os.environ.get("WANDB_MODE", "").lower() != "disabled"
            and bool(args.wandb_project or os.environ.get("WANDB_PROJECT")))


def run_files_dir(args) -> Optional[str]:
    """Where wandb keeps its run files (``wandb/``, offline runs included): ``$WANDB_DIR`` when set (wandb
    reads it), else beside the results file or the checkpoints, never silently in the working directory."""
    if os.environ.get("WANDB_DIR"):
        return None
    results = getattr(args, "results_file", None)
    if results and os.path.realpath(results) != os.devnull:
        return os.path.dirname(os.path.abspath(results))
    return getattr(args, "checkpoint_dir", None) or None


class WandbLogger:
    """Logs one run; inactive (every method a no-op) when logging is off or has failed."""

    def __init__(self, args, saved: Optional[dict] = None, loss_every: int = LOSS_EVERY, stream=None):
        saved = saved or {}
        self.loss_every = loss_every
        self.stream = stream  # None: sys.stderr as it is when a warning is printed
        self.step = int(saved.get("step", 0))   # optimizer steps over the whole run, kept across resumes
        self.run_id = saved.get("run_id")
        self.run = None
        self.init_timeout = INIT_TIMEOUT_S
        if wandb_wanted(args):
            self._guard("start", lambda: self._start(args))

    @property
    def active(self) -> bool:
        return self.run is not None

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed run continues the same wandb run and step count."""
        return {"step": self.step, "run_id": self.run_id}

    def _guard(self, what: str, action) -> None:
        """Run a wandb call; on failure warn once, close the run if possible and stop logging."""
        try:
            action()
        except Exception as exc:
            run, self.run = self.run, None
            self._warn(what, exc)
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:
                    pass

    def _warn(self, what: str, exc: Exception) -> None:
        message = one_line(exc)
        if what == "start" and "timed out" in message.lower():
            message += f" (after {self.init_timeout:g}s: set {INIT_TIMEOUT_ENV} to wait longer)"
        print(f"warning: wandb {what} failed ({type(exc).__name__}: {message}); wandb logging is off for the "
              f"rest of this run, training and the results file are unaffected", file=self.stream or sys.stderr, flush=True)

    def _start(self, args) -> None:
        self.init_timeout = init_timeout()
        import wandb
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
        if not offline and not _has_credentials(wandb):
            raise RuntimeError("not logged in (run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline)")
        # Agents choose the run id themselves (WANDB_RUN_ID); otherwise a resumed run continues its own.
        resume_id = self.run_id if self.run_id and "WANDB_RUN_ID" not in os.environ else None
        where = {"dir": run_files_dir(args)} if run_files_dir(args) else {}
        self.run = wandb.init(project=args.wandb_project, entity=args.wandb_entity, name=args.wandb_name,
                              config=dict(vars(args)), id=resume_id, resume="allow" if resume_id else None,
                              settings=wandb.Settings(init_timeout=self.init_timeout), **where)
        self.run_id = self.run.id
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("task")
        for prefix in ("class_il", "task_il", "collapse"):
            self.run.define_metric(f"{prefix}/*", step_metric="task")

    def log(self, row: dict) -> None:
        """Log ``row`` when logging is on; a failure warns once and turns logging off."""
        if self.run is not None:
            self._guard("log", lambda: self.run.log(row))

    def define_metric(self, pattern: str, step_metric: str) -> None:
        """Plot the metrics matching ``pattern`` against ``step_metric`` (when logging is on)."""
        if self.run is not None:
            self._guard("log", lambda: self.run.define_metric(pattern, step_metric=step_metric))

    def update_summary(self, values: dict) -> None:
        """Put ``values`` into the run's summary (when logging is on)."""
        if self.run is not None:
            self._guard("summary", lambda: self.run.summary.update(values))

    def train_step(self, loss) -> None:
        """Count one optimizer step; every ``loss_every`` steps log the loss (the only device sync here)."""
        self.step += 1
        if self.run is not None and self.step % self.loss_every == 0:
            self.log({"train/loss": float(loss), "train/step": self.step})

    def task_done(self, task: int, class_il: list, task_il: list, collapse: Optional[dict] = None) -> None:
        """Per-task and mean accuracies after training task ``task`` (0-based), and the
        neural-collapse metrics (under ``collapse/``) when they were computed."""
        if self.run is None:
            return
        row = {"task": task + 1, "class_il/mean": sum(class_il) / len(class_il),
               "task_il/mean": sum(task_il) / len(task_il)}
        for j, (c, t) in enumerate(zip(class_il, task_il)):
            row[f"class_il/task_{j + 1}"] = c
            row[f"task_il/task_{j + 1}"] = t
        for name, value in (collapse or {}).items():
            row[f"collapse/{name}"] = value
        self.log(row)

    def finish(self, results: Optional[dict] = None, exit_code: int = 0) -> None:
        """Final metrics into the run summary (when given), then close the run.

        The summary also holds the whole results file as JSON text (``RESULTS_KEY``), from which
        ``python -m utils.summarize --wandb`` builds the same tables as from the files.  An interrupted
        run (exit code ``INTERRUPTED``: SIGTERM from a scheduler or agent, its checkpoint kept) is first
        marked as preempting, so that a wandb sweep requeues it and its next agent resumes it."""
        if self.run is None:
            return
        if results is not None:
            final = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            final[RESULTS_KEY] = json.dumps(results, sort_keys=True)
            self.update_summary(final)
        if exit_code == INTERRUPTED and self.run is not None:
            self.mark_preempting()
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                self._warn("finish", exc)

    def mark_preempting(self) -> None:
        """Tell wandb the run is being preempted (requeued by its sweep); never fatal: a failure is one
        warning and the run is still closed normally."""
        mark = getattr(self.run, "mark_preempting", None)
        if self.run is None or mark is None:
            return
        try:
            mark()
        except Exception as exc:
            self._warn("mark_preempting", exc)


def _has_credentials(wandb) -> bool:
    """Whether wandb is logged in, asked without an interactive prompt (which would block a run).

    Versions of wandb without ``login(prompt=...)`` are assumed logged in; a
    missing login then fails in ``wandb.init`` and is reported like any failure.
    """
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:
        return True
