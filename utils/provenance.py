"""Where and from what a results file came: git commit (and whether the tree was dirty), host, versions.

Each lookup that can fail (no git, not a checkout, a package not installed)
gives ``None`` for its field instead of stopping the run.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout this program runs from
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "wandb")
GIT_TIMEOUT_S = 10


def start_time() -> str:
    """Now, in ISO 8601 with the UTC offset (to the second)."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _git(*args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def package_versions() -> dict:
    """Installed versions of the packages a run depends on (absent ones left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def provenance() -> dict:
    """``git_commit`` (None outside a git checkout), ``git_dirty`` (tracked files changed since it),
    ``host``, ``python_version`` and ``packages``."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit.strip() if commit else None,
            "git_dirty": None if status is None else bool(status.strip()),
            "host": socket.gethostname(), "python_version": platform.python_version(),
            "packages": package_versions()}
