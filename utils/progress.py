"""A minimal per-task progress bar: drawn on a terminal, silent otherwise."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    """Redraws one stderr line at most every ``interval`` seconds; reading the loss syncs the device,
    so it is only read when a line is actually drawn."""

    def __init__(self, enabled: bool | None = None, stream=None, interval: float = 0.25):
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0

    def update(self, label: str, step: int, total: int, loss) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        width = 30
        done = int(width * step / max(total, 1))
        self.stream.write(f"\r{label} [{'#' * done}{'.' * (width - done)}] {step}/{total} "
                          f"loss {float(loss):.4f}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
