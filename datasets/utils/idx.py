"""Reading MNIST's IDX files (gzipped or not) with size checks, without torchvision."""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from datasets.utils import describe_error, quote
from utils.errors import DataError

# The element types the IDX format defines; MNIST's files (and this reader) use unsigned bytes only.
IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "16-bit int", 0x0C: "32-bit int",
             0x0D: "32-bit float", 0x0E: "64-bit float"}
UNSIGNED_BYTE = 0x08
MAX_NDIM = 4  # MNIST's files have 1 (labels) or 3 (images) dimensions
CHUNK = 1 << 20

# The (images, labels) file stems of each MNIST split, as torchvision stores them in MNIST/raw/.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_up_to(f, n: int) -> bytes:
    """At most ``n`` bytes of ``f``, read in chunks: a header claiming a huge size (or a small gzip file
    that expands enormously) costs no more memory than the data actually there, up to ``n``."""
    chunks, total = [], 0
    while total < n:
        chunk = f.read(min(CHUNK, n - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _parse(path: str, f) -> np.ndarray:
    magic = _read_up_to(f, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {quote(magic)})")
    code, ndim = magic[2], magic[3]
    if code != UNSIGNED_BYTE:
        kind = f"{IDX_TYPES[code]} values" if code in IDX_TYPES else "an unknown element type"
        raise DataError(f"{path} holds {kind} (type code 0x{code:02X}); MNIST files hold unsigned bytes "
                        f"(type code 0x{UNSIGNED_BYTE:02X})")
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(f"{path} has a bad IDX header: it declares {ndim} dimensions (1 to {MAX_NDIM} expected)")
    sizes = _read_up_to(f, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{path} is truncated (incomplete IDX header)")
    shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(shape)
    data = _read_up_to(f, expected + 1)  # one byte more reveals data beyond what the header declares
    if len(data) != expected:
        item = math.prod(shape[1:])
        found = f"more than {expected}" if len(data) > expected else f"{len(data)}"
        raise DataError(f"{path} is corrupt: its header ({' x '.join(map(str, shape))}) implies {shape[0]} items "
                        f"of {item} byte{'s' * (item != 1)}, {expected} bytes of data, but the file holds {found} "
                        f"bytes of data")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when the name ends in .gz); raise ``DataError`` naming
    the file if it is unreadable, truncated, damaged or malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return _parse(path, f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # bad header or CRC, truncated, bad deflate data
        raise DataError(f"cannot read {path}: damaged gzip data ({describe_error(exc)})") from None
    except OSError as exc:  # no permission, a folder, an I/O error...
        raise DataError(f"cannot read {path} ({describe_error(exc)})") from None


def find_file(directory: str, stem: str) -> str | None:
    """The path of ``stem`` or ``stem.gz`` in ``directory``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
        if os.path.exists(path):  # a folder where the file belongs: not "missing", and not to be downloaded over
            raise DataError(f"{path} is not a file (a folder or device where the IDX file belongs); remove it "
                            f"and put the file there")
    return None


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in .gz); for tests and benchmarks."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
