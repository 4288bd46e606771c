"""What data a run saw: the benchmark's source (the files read, their sizes and a content hash; or
"embedded" / "synthetic"), and whether the files hold the benchmark's canonical number of samples.

The content hash (SHA-256 over every file's relative path and bytes, in sorted order) is computed
once and cached beside the data in ``HASH_CACHE``, keyed by every file's path, size and modification
time, so a later run only lists the files.  A folder that cannot be written keeps no cache and the
hash is computed again.  Derived files (the decoded ``uint8-cache*.npz`` caches, hidden files) are not
the data and are left out.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import List, Optional, Tuple

import torch

from utils.io import atomic_write_bytes

HASH_CACHE = ".fno-cl-sha256.json"
LISTED_FILES = 20  # more files than this are described per folder (count and bytes), not one by one
CHUNK = 1 << 20


def is_derived(name: str) -> bool:
    """A file made from the data (a decoded cache, this module's hash cache), not part of it."""
    return name.startswith(".") or (name.startswith("uint8-cache") and name.endswith(".npz"))


def data_files(paths: List[str]) -> List[str]:
    """Every data file under ``paths`` (files, or folders walked recursively), sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, n) for n in sorted(names) if not is_derived(n)]
    return sorted(found)


def content_hash(files: List[str], base: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, base).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
    return digest.hexdigest()


def cached_hash(files: List[str], base: str) -> str:
    """``content_hash``, from ``base/HASH_CACHE`` when the files' paths, sizes and times are unchanged."""
    stats = [(os.path.relpath(p, base), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    cache = os.path.join(base, HASH_CACHE)
    try:
        with open(cache, encoding="utf-8") as f:
            kept = json.load(f)
        if isinstance(kept, dict) and kept.get("key") == key and isinstance(kept.get("sha256"), str):
            return kept["sha256"]
    except (OSError, ValueError):
        pass
    value = content_hash(files, base)
    try:
        atomic_write_bytes(cache, json.dumps({"key": key, "sha256": value}).encode())
    except OSError:
        pass  # a read-only data folder: the hash is computed again next time
    return value


def describe_files(paths: List[str]) -> dict:
    """``{"source": "files", "root", "files": [{"path", "bytes"}...], "bytes", "sha256"}`` for the data under
    ``paths``; beyond ``LISTED_FILES`` files the list holds one entry per given path (with its file count)."""
    files = data_files(paths)
    base = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    if os.path.isfile(base):
        base = os.path.dirname(base)
    sizes = {p: os.path.getsize(p) for p in files}
    if len(files) <= LISTED_FILES:
        listed = [{"path": os.path.relpath(p, base), "bytes": sizes[p]} for p in files]
    else:
        listed = []
        for path in paths:
            inside = [p for p in files if os.path.abspath(p).startswith(os.path.abspath(path))]
            listed.append({"path": os.path.relpath(path, base) if path != base else ".", "files": len(inside),
                           "bytes": sum(sizes[p] for p in inside)})
    return {"source": "files", "root": os.path.abspath(base), "files": listed, "bytes": sum(sizes.values()),
            "sha256": cached_hash(files, base) if files else None}


def size_warning(name: str, loaded: Tuple[int, int], canonical: Optional[Tuple[int, int]]) -> Optional[str]:
    """One line when the files hold another number of training / test samples than the benchmark's."""
    if canonical is None or tuple(loaded) == tuple(canonical):
        return None
    return (f"{name}: the data hold {loaded[0]} training and {loaded[1]} test samples, not the benchmark's "
            f"{canonical[0]} and {canonical[1]}: these results are not comparable with published ones")


SYNTHETIC_BYTES = 64 << 20   # a synthetic twin's training images stay below this (224-pixel benchmarks get fewer)
SYNTHETIC_PER_CLASS = (10, 5)  # training and test images per class, at most
SYNTHETIC_SEED = 0           # the synthetic data are part of the benchmark's twin, not of the run's seed


def synthetic_sizes(num_classes: int, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """Training and test images per class of a synthetic twin: ``SYNTHETIC_PER_CLASS``, fewer (at least
    2 and 1) where the images are large."""
    pixels = 1
    for side in input_shape:
        pixels *= side
    train = max(2, min(SYNTHETIC_PER_CLASS[0], SYNTHETIC_BYTES // (num_classes * pixels)))
    return train, max(1, min(SYNTHETIC_PER_CLASS[1], train // 2))


def synthetic_arrays(num_classes: int, input_shape: Tuple[int, ...], top: int, per_class: int, stream: int):
    """``per_class`` images of each class (labels in class order): noise in [0, top * 5/8] with a bright
    pattern of each class's own (an eighth of the pixels raised by ``top * 3/8``), so a method can learn
    them; drawn from a fixed generator (``stream`` tells the splits apart)."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED * 1000 + stream)
    patterns = torch.rand((num_classes,) + tuple(input_shape), generator=g) < 0.125
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randint(0, top * 5 // 8 + 1, (len(labels),) + tuple(input_shape), generator=g)
    x = noise + patterns[labels].long() * (top * 3 // 8)
    return x.clamp(max=top).to(torch.uint8), labels
