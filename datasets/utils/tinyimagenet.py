"""Reading TinyImageNet from the standard ``tiny-imagenet-200`` folder, through a validated uint8 cache.

Layout read (as unzipped from the official archive)::

    tiny-imagenet-200/wnids.txt                   one WordNet id per line (200 classes)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG  the training images of each class
    tiny-imagenet-200/val/images/*.JPEG           the labelled validation images, used as test set
    tiny-imagenet-200/val/val_annotations.txt     "<file>\t<wnid>\t<box>" per validation image

Class ``k`` is the ``k``-th wnid in *sorted* order (not the order of
``wnids.txt``).  The JPEGs are decoded once into ``uint8-cache.npz`` inside
the folder.  The cache records a fingerprint of the sources (every file's
name, byte size, modification time in nanoseconds and label); it is used only
when that fingerprint and the array shapes match and the archive reads back
intact (zip CRCs), otherwise it is rebuilt.  A file replaced by another of the
same size *and* the same modification time (e.g. copied with its time
preserved) is not noticed: ``rebuild_cache=True`` decodes every file again.
The unlabelled ``test/`` folder of the archive is not used.
"""
from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from datasets.utils import attempt_download, describe_error, quote
from datasets.utils.continual_dataset import Split
from utils.errors import DataError
from utils.io import atomic_writer

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SHAPE = (3, 64, 64)
CACHE_NAME = "uint8-cache.npz"
CACHE_FORMAT = 2  # bump when the cache's content changes meaning
JPEG_SUFFIXES = (".jpeg", ".jpg")
REQUIRED = ("wnids.txt", "train", os.path.join("val", "images"), os.path.join("val", "val_annotations.txt"))


def tinyimagenet_folder(root: str) -> str:
    return os.path.join(root, FOLDER)


def missing_tinyimagenet_files(root: str) -> List[str]:
    folder = tinyimagenet_folder(root)
    return [name for name in REQUIRED if not os.path.exists(os.path.join(folder, name))]


def try_download_tinyimagenet(root: str) -> Optional[str]:
    """Download and unzip the official archive into ``root``; return the reason in one line if that fails
    (the folders a failed attempt created are removed again when empty)."""
    def download():
        from torchvision.datasets.utils import download_and_extract_archive
        download_and_extract_archive(URL, root, md5=ARCHIVE_MD5)

    return attempt_download(download, tinyimagenet_folder(root))


@dataclass
class Sources:
    """The image files of each split with their labels, and the sorted class ids."""
    wnids: List[str]
    train: List[Tuple[str, int]]
    test: List[Tuple[str, int]]

    def fingerprint(self, folder: str) -> str:
        """A digest of every source file's relative path, byte size, modification time (ns) and label."""
        digest = hashlib.sha256(f"format {CACHE_FORMAT}\n{' '.join(self.wnids)}\n".encode())
        for path, label in self.train + self.test:
            stat = os.stat(path)
            entry = f"{os.path.relpath(path, folder)}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n"
            digest.update(entry.encode())
        return digest.hexdigest()


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith(JPEG_SUFFIXES)


def read_lines(path: str) -> List[str]:
    """The lines of a UTF-8 text file; ``DataError`` naming the file if it cannot be read as such."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {describe_error(exc)}") from None


def is_plain_name(name: str) -> bool:
    """A file or folder name that stays inside its folder: no path separator, not ``.`` or ``..``."""
    return name not in ("", ".", "..") and "/" not in name and os.sep not in name


def list_sources(folder: str) -> Sources:
    """List the labelled files of both splits; raise ``DataError`` on an inconsistent tree."""
    wnids_file = os.path.join(folder, "wnids.txt")
    listed = [line.strip() for line in read_lines(wnids_file) if line.strip()]
    for wnid in listed:
        if not is_plain_name(wnid):
            raise DataError(f"{wnids_file}: class id {quote(wnid)} is not a plain file name "
                            f"(it would name a folder outside {os.path.join(folder, 'train')})")
    if not listed or len(set(listed)) != len(listed):
        raise DataError(f"{os.path.join(folder, 'wnids.txt')} must list distinct class ids, one per line "
                        f"(found {len(listed)} lines, {len(set(listed))} distinct)")
    wnids = sorted(listed)
    label_of = {w: k for k, w in enumerate(wnids)}
    train = []
    for wnid in wnids:
        directory = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(directory):
            raise DataError(f"TinyImageNet class {wnid} (listed in wnids.txt) has no folder {directory}")
        files = sorted(n for n in os.listdir(directory) if _is_jpeg(n))
        if not files:
            raise DataError(f"{directory} holds no JPEG files")
        train += [(os.path.join(directory, n), label_of[wnid]) for n in files]
    annotations = os.path.join(folder, "val", "val_annotations.txt")
    test = []
    for number, line in enumerate(read_lines(annotations), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1].strip() not in label_of:
            raise DataError(f"{annotations} line {number}: expected '<file>\\t<wnid listed in wnids.txt>', "
                            f"got {quote(line.strip())}")
        name = fields[0].strip()
        if not is_plain_name(name):
            raise DataError(f"{annotations} line {number}: {quote(name)} is not a plain file name "
                            f"(validation images must be in {os.path.join(folder, 'val', 'images')})")
        path = os.path.join(folder, "val", "images", name)
        if not os.path.isfile(path):
            raise DataError(f"{annotations} line {number} names {quote(path)}, which does not exist")
        test.append((path, label_of[fields[1].strip()]))
    if not test:
        raise DataError(f"{annotations} lists no validation images")
    test.sort()
    return Sources(wnids, train, test)


def decode_jpeg(path: str) -> np.ndarray:
    """One image as uint8 (3, 64, 64); grayscale files are expanded to RGB."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))  # convert() decodes fully: truncation is caught here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # a bomb is no OSError
        raise DataError(f"{path} is not a readable image ({describe_error(exc)})") from None
    if pixels.shape != IMAGE_SHAPE[1:] + IMAGE_SHAPE[:1]:
        raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; TinyImageNet images are 64x64")
    return pixels.transpose(2, 0, 1)


def decode_split(files: List[Tuple[str, int]]) -> Tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(files),) + IMAGE_SHAPE, dtype=np.uint8)  # filled in place: no second copy
    for i, (path, _) in enumerate(files):
        images[i] = decode_jpeg(path)
    return images, np.array([label for _, label in files], dtype=np.int64)


ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def read_cache(path: str, fingerprint: str, sources: Sources,
               image_shape: Tuple[int, ...] = IMAGE_SHAPE) -> Tuple[Optional[dict], str]:
    """The cached arrays if the cache is intact, matches ``sources`` and holds images of ``image_shape``;
    else ``None`` and why not (also the cache of the 224-pixel benchmarks, ``datasets/utils/image_folders.py``)."""
    if not os.path.isfile(path):
        return None, "no cache yet"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["fingerprint"]) != fingerprint:
                return None, "the source files changed"
            arrays = {name: archive[name] for name in ARRAYS}  # zipfile checks each member's CRC
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        return None, f"the cache is unreadable ({type(exc).__name__})"
    for split, files in (("train", sources.train), ("test", sources.test)):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if (x.dtype != np.uint8 or x.shape != (len(files),) + tuple(image_shape) or y.dtype != np.int64
                or y.shape != (len(files),)):
            return None, f"the cached {split} arrays have the wrong shape"
    return arrays, ""


def write_cache(path: str, fingerprint: str, arrays: dict) -> None:
    with atomic_writer(path) as f:
        np.savez(f, fingerprint=np.array(fingerprint), **arrays)


def load_tinyimagenet(root: str, download: bool = True, log=None,
                      rebuild_cache: bool = False) -> Tuple[Split, Split, List[str]]:
    """Train and test (official validation) splits as uint8 N x 3 x 64 x 64, and the sorted wnids.

    ``rebuild_cache=True`` ignores the cache, decodes every JPEG again and rewrites the cache: the
    check of the files' content that the fingerprint (names, sizes, times) cannot make.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    folder = tinyimagenet_folder(root)
    if missing_tinyimagenet_files(root):
        problem = try_download_tinyimagenet(root) if download else "download disabled"
        missing = missing_tinyimagenet_files(root)
        if missing:
            raise DataError(f"TinyImageNet files missing: {', '.join(missing)} must be in {folder} "
                            f"(unzip {URL} into {root}) and downloading failed ({problem})")
    sources = list_sources(folder)
    fingerprint = sources.fingerprint(folder)
    cache = os.path.join(folder, CACHE_NAME)
    if rebuild_cache:
        arrays, reason = None, "rebuild_cache requested: every JPEG is decoded again"
    else:
        arrays, reason = read_cache(cache, fingerprint, sources)
    if arrays is None:
        log(f"TinyImageNet: decoding {len(sources.train) + len(sources.test)} JPEG files into {cache} ({reason})")
        train_x, train_y = decode_split(sources.train)
        test_x, test_y = decode_split(sources.test)
        arrays = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
        try:
            write_cache(cache, fingerprint, arrays)
        except OSError as exc:  # read-only data folder: work from memory, decode again next time
            log(f"TinyImageNet: could not write the cache {cache} ({exc}); continuing without it")
    as_split = lambda split: Split(torch.from_numpy(arrays[f"{split}_x"]), torch.from_numpy(arrays[f"{split}_y"]))
    return as_split("train"), as_split("test"), sources.wnids
