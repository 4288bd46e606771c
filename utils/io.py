"""Output files and folders: atomic writes (a reader never sees a half-written results file), writability
checks before a run starts, and removing the folders a failed run created and left empty."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import List

from utils.errors import UserError


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as status:
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


def check_writable_file(path: str, what: str) -> None:
    """``path`` can be (re)placed atomically: it is not a directory and its folder is writable."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'results.json')}")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")


@contextlib.contextmanager
def atomic_writer(path: str):
    """A binary file object for ``path``: written to a temporary file beside it, fsynced, then
    renamed over ``path`` on success; on any error the temporary file is removed and ``path``
    is untouched.  Lets large data (e.g. a dataset cache) be streamed without a copy in memory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
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
