"""Claims: which runner runs which run, for any number of runners sharing one results folder (NFS too).

Before a runner starts a run it creates the run's claim file, ``DIR/<name>.claim``
beside the results file, with ``O_CREAT | O_EXCL`` (an atomic create, also over
NFS v3+): exactly one runner succeeds.  The claim holds the runner's host, pid
and start time; the runner refreshes its modification time (the heartbeat)
every ``HEARTBEAT_S`` seconds while the run lasts and removes the claim when the
run has ended.

A claim whose owner is gone is taken over:
* same host: the owner's pid no longer exists (and the run's lock, ``utils.runlock``, is free, so
  a run still writing its checkpoint on the way out is waited for);
* any host: the heartbeat is older than ``timeout_s`` (default ``CLAIM_TIMEOUT_S``).
Taking over renames the stale claim to a unique name (an atomic step only one
runner can do on that file), checks that the renamed file is the stale claim it
judged (not a fresh claim made in between, which is put back), and then
creates its own claim with ``O_EXCL`` like any first claim.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import time
import uuid
from typing import Optional

try:
    import fcntl
except ImportError:  # not POSIX: the run lock is not consulted
    fcntl = None

from utils.runlock import lock_file

CLAIM_SUFFIX = ".claim"
HEARTBEAT_S = 30.0
CLAIM_TIMEOUT_S = 300.0


def claim_path(results_file: str) -> str:
    """The claim of a run: its results file's name with ``.claim`` for ``.json``."""
    root, ext = os.path.splitext(results_file)
    return (root if ext == ".json" else results_file) + CLAIM_SUFFIX


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}


def read_claim(path: str) -> Optional[dict]:
    """The claim's content, ``{}`` while its creator has not written it yet, ``None`` when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a planted link or FIFO: never followed
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        text = f.read(4096).decode("utf-8", errors="replace") if stat.S_ISREG(os.fstat(fd).st_mode) else ""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_locked(results_file: str) -> bool:
    """Whether a process still holds the run's lock (``utils.runlock``) on this host."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_file(results_file), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def is_stale(path: str, results_file: str, timeout_s: float, now: Optional[float] = None) -> bool:
    """Whether the claim at ``path`` belongs to a runner that is gone."""
    try:
        beat = os.stat(path).st_mtime
    except FileNotFoundError:
        return False  # no claim: nothing to take over (a plain claim will do)
    now = time.time() if now is None else now
    if now - beat > timeout_s:
        return True
    owner = read_claim(path) or {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"]) and not _run_locked(results_file)
    return False


class Claim:
    """A claim held by this process: ``heartbeat()`` while the run lasts, ``release()`` at its end."""

    def __init__(self, path: str, owner: dict):
        self.path, self.owner = path, owner

    def heartbeat(self) -> None:
        try:
            os.utime(self.path, follow_symlinks=False)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the claim if it is still this runner's (a taken-over claim is left to its new owner)."""
        current = read_claim(self.path)
        if current and current.get("pid") == self.owner["pid"] and current.get("host") == self.owner["host"] \
                and current.get("start") == self.owner["start"]:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _create(path: str) -> Optional[Claim]:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return None
    owner = _owner()
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
        f.flush()
        os.fsync(f.fileno())
    return Claim(path, owner)


def try_claim(results_file: str, timeout_s: float = CLAIM_TIMEOUT_S) -> Optional[Claim]:
    """Claim the run of ``results_file``: a ``Claim``, or ``None`` when a live runner holds it."""
    path = claim_path(results_file)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    claim = _create(path)
    if claim is not None:
        return claim
    try:
        judged = os.stat(path)
    except FileNotFoundError:
        return _create(path)  # released in between
    if not is_stale(path, results_file, timeout_s):
        return None
    tomb = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return _create(path)  # another runner took it over first: only one create wins
    if not os.path.samestat(os.stat(tomb), judged):
        # A fresh claim was made between our look and our rename: put it back, it is not ours to take.
        try:
            os.link(tomb, path)
        except FileExistsError:
            pass
        os.unlink(tomb)
        return None
    os.unlink(tomb)
    return _create(path)
