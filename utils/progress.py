"""Progress of each stage (a task of ``main.py``, an epoch of ``main_lt.py``): a bar on a terminal, plain
lines elsewhere (nohup, SLURM, grid logs), so that a log shows a long task advancing."""
from __future__ import annotations

import sys
import time
from typing import Optional

LINE_EVERY_S = 60.0  # off a terminal: a line at every epoch's end, and at least this often in between


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """On a terminal (``stream``, stderr by default) one line redrawn at most every ``interval`` seconds;
    otherwise one line on ``line_stream`` (stdout by default) at the end of every epoch and stage and at
    most ``line_every`` seconds apart.  Both show the step, the epoch (when ``start`` gave the epoch's
    length), steps/s, elapsed time, ETA and the loss.  Reading the loss waits for the device, so it is
    read only for a line actually written: the only synchronisation.

    ``enabled``: ``None`` chooses by whether ``stream`` is a terminal, ``True`` forces the bar and
    ``False`` silences both.
    """

    def __init__(self, enabled: bool | None = None, stream=None, interval: float = 0.25, line_stream=None,
                 line_every: float = LINE_EVERY_S):
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.line_stream = line_stream or sys.stdout
        self.bar = self.stream.isatty() if enabled is None else enabled
        self.lines = enabled is None and not self.bar
        self.enabled = self.bar  # kept for callers that ask whether a bar is drawn
        self.interval, self.line_every = interval, line_every
        self._last = 0.0
        self._t0: Optional[float] = None
        self._per_epoch: Optional[int] = None
        self._n_epochs: Optional[int] = None

    def start(self, steps_per_epoch: int, n_epochs: int) -> None:
        """Before a stage of ``n_epochs`` epochs of ``steps_per_epoch`` steps (a stage may stop earlier)."""
        self._per_epoch, self._n_epochs = steps_per_epoch, n_epochs
        self._t0 = self._last = time.monotonic()

    def _status(self, step: int, total: int, now: float) -> str:
        elapsed = max(now - self._t0, 1e-9)
        rate = step / elapsed
        epoch = (f" epoch {min(-(-step // self._per_epoch), self._n_epochs)}/{self._n_epochs}"
                 if self._per_epoch else "")
        return (f"{step}/{total}{epoch}  {rate:.1f} steps/s  elapsed {clock(elapsed)}  "
                f"ETA {clock((total - step) / rate)}")

    def update(self, label: str, step: int, total: int, loss) -> None:
        if not (self.bar or self.lines):
            return
        now = time.monotonic()
        if self._t0 is None:  # a stage begun without ``start``: timed from its first step
            self._t0 = self._last = now
        if self.bar:
            if now - self._last < self.interval and step < total:
                return
            width = 30
            done = int(width * step / max(total, 1))
            self.stream.write(f"\r{label} [{'#' * done}{'.' * (width - done)}] {self._status(step, total, now)}  "
                              f"loss {float(loss):.4f}")
            self.stream.flush()
        else:
            epoch_end = bool(self._per_epoch) and step % self._per_epoch == 0
            if not (step == total or epoch_end or now - self._last >= self.line_every):
                return
            self.line_stream.write(f"{label}  step {self._status(step, total, now)}  loss {float(loss):.4f}\n")
            self.line_stream.flush()
        self._last = now

    def close(self) -> None:
        """The stage is over (or stopped): end the bar's line; the next stage is timed afresh."""
        self._t0, self._per_epoch, self._n_epochs = None, None, None
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()
