"""Output files and folders: atomic writes (a reader never sees a half-written results file), writability
checks before a run starts, and removing the folders a failed run created and left empty."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from typing import List

from utils.errors import UserError


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore, the only portable way to read it
    os.umask(mask)
    return mask


def check_writable_dir(directory: str, what: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there, before any training.

    Raises ``UserError`` naming ``what`` (e.g. "--checkpoint_dir") and the reason, so a read-only,
    full or misnamed location fails in the first second, not after hours of training."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise UserError(f"{what} {directory!r} is not writable: {exc.strerror or exc}") from None


def discards(path: str) -> bool:
    """``path`` is the null device: a results file there means "write nothing" (no file, no lock)."""
    return os.path.realpath(path) == os.devnull


def check_target(path: str, what: str) -> None:
    """What is at ``path`` may be replaced by a rename: nothing, or a regular file (or a link, which the
    rename replaces, never its target).  A FIFO, device or socket would silently become a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{what} {path!r} is not writable: {exc.strerror or exc}") from None  # e.g. under a file
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'results.json')}")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UserError(f"{what} {path!r} is not a regular file (a FIFO, device or socket); give a file name "
                        f"(or {os.devnull} to write nothing)")


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be (re)placed atomically: not a directory or another non-regular file, its folder writable,
    and the temporary file the write uses (a longer name than ``path``'s) can be created there."""
    if discards(path):
        return
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'results.json')}")
    check_target(path, what)
    directory = os.path.dirname(os.path.abspath(path))
    check_writable_dir(directory, f"the folder of {what}")
    try:
        fd, tmp = _temporary(path)
    except OSError as exc:
        raise UserError(f"{what} {path!r} cannot be written: {exc.strerror or exc} (its temporary file "
                        f"is named .{os.path.basename(path)}.XXXXXXXX.tmp)") from None
    os.close(fd)
    os.unlink(tmp)


def _temporary(path: str):
    """The temporary file an atomic write of ``path`` goes through: (descriptor, name), beside ``path``."""
    return tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                            dir=os.path.dirname(os.path.abspath(path)))


def open_created(path: str, append: bool = False):
    """A text file the project creates in a shared folder (a log, a lock's neighbour), opened for writing
    without following a link planted at ``path`` (``O_NOFOLLOW``) and refused unless it is a regular file,
    so nothing outside the folder is ever truncated or written.  ``append``: keep what it holds."""
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0))
    if not append:
        os.ftruncate(fd, 0)  # only now that it is known to be a regular file of its own
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8")


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a file in a shared folder: never through a link (``O_NOFOLLOW``), without blocking on a
    FIFO (``O_NONBLOCK``, cleared once open), refused in one line unless it is a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; refusing to write through it (remove it)") from None
        raise UserError(f"cannot open {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; refusing to write to it (remove it)")
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def atomic_writer(path: str):
    """A binary file object for ``path``: written to a temporary file beside it, fsynced, then
    renamed over ``path`` on success; on any error the temporary file is removed and ``path``
    is untouched.  A FIFO, device or socket at ``path`` is refused (never replaced); the null device
    discards the bytes.  Lets large data (e.g. a dataset cache) be streamed without a copy in memory."""
    if discards(path):  # documented: the null device takes the bytes and keeps nothing
        with open(os.devnull, "wb") as sink:
            yield sink
        return
    check_target(path, "the file")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; colleagues may share these files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    with atomic_writer(path) as f:
        f.write(data)


def write_json_atomic(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def finite_only(obj, where: str = ""):
    """``obj`` with every NaN or infinity replaced by ``None`` (JSON has no such numbers), and the places
    replaced (e.g. ``validation.class_il``), so a finished run's results are never lost to one of them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "the value"]
    if isinstance(obj, dict):
        pairs = [(k, finite_only(v, f"{where}.{k}" if where else str(k))) for k, v in obj.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, places) in pairs for p in places]
    if isinstance(obj, (list, tuple)):
        items = [finite_only(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, places in items for p in places]
    return obj, []


def absent_folders(path: str) -> List[str]:
    """``path`` and those of its parent folders that do not exist yet, deepest first."""
    absent = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        absent.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return absent


def remove_empty_folders(folders: List[str]) -> None:
    """Remove each folder that is (still) empty, in the order given; any other is left alone."""
    for folder in folders:
        try:
            os.rmdir(folder)  # only ever removes an empty folder
        except OSError:
            pass
