"""One process per run: ``with run_lock(args.results_file, args.checkpoint_dir): ...``.

Every place a run writes (its results file, its checkpoint directory) gets a
lock file beside it, ``PLACE.lock``, held with ``fcntl.flock`` for as long as
the run lasts.  A second process on the same run (a wandb agent and the grid
runner, a restarted runner next to an old run, the same command typed twice)
finds the lock held and stops at once with one line naming the holder's pid,
before it reads or writes anything of the run.

The kernel releases a flock when the process ends, however it ends (SIGKILL,
a crash, a machine reboot), so a lock never outlives its process and a restart
is never blocked: a lock file left by a killed process is simply locked again.
On a clean exit the lock file is removed.  A link or anything but a regular file
at the lock's place is refused in one line (never written through).  Where ``fcntl`` does not exist
(Windows) runs are not locked.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking
    fcntl = None

from utils.errors import UserError
from utils.io import open_regular

LOCK_SUFFIX = ".lock"


def lock_file(place: str) -> str:
    """The lock file of a results file or checkpoint directory: beside it, never inside it."""
    return os.path.normpath(place) + LOCK_SUFFIX


@contextlib.contextmanager
def run_lock(*places: Optional[str]) -> Iterator[None]:
    """Hold the lock of each place (``None`` entries are ignored) for the duration of the block.

    Raises ``UserError`` ("another process (pid N) is already running this
    run: ...") when another process holds one of them; nothing is locked then.
    """
    with contextlib.ExitStack() as stack:
        for place in dict.fromkeys(os.path.normpath(p) for p in places if p):
            stack.enter_context(_hold(place))
        yield


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ('unknown' while it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _hold(place: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    path = lock_file(place)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        fd = open_regular(path, os.O_RDWR | os.O_CREAT)  # never through a planted link; not inherited
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"another process (pid {holder}) is already running this run: {place} "
                            f"is locked ({path})") from None
        except OSError as exc:
            os.close(fd)
            raise UserError(f"cannot lock {path}: {exc.strerror or exc}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed this file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Removed while still held, so no one can lock this file after us; the next run creates a fresh one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
