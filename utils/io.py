"""Atomic file writes: a reader never sees a half-written results file."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_writer(path: str):
    """A binary file object for ``path``: written to a temporary file beside it, fsynced, then
    renamed over ``path`` on success; on any error the temporary file is removed and ``path``
    is untouched.  Lets large data (e.g. a dataset cache) be streamed without a copy in memory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
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
