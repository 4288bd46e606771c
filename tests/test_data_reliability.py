"""Damaged and hostile data files: each is refused with one line naming the file and what is wrong
(``DataError``; ``main.py`` prints it and exits 2), nothing in a file is executed, nothing is left
half-written.  Every file here is written in the exact on-disk format its loader reads."""
import gzip
import os
import pickle
import re
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

import main
from datasets import get_dataset_class
from datasets.seq_mnist import SequentialMNIST
from datasets.utils import cifar_io, tinyimagenet
from datasets.utils.idx import MNIST_FILES, read_idx, write_idx
from tests.conftest import write_mnist
from tests.test_image_datasets import smooth_image, write_tiny_cifar, write_tiny_imagenet
from utils.errors import DataError

MAX_MESSAGE = 400  # characters besides paths: a data error quotes at most ~200 characters of the data


def one_line_error(load, *must_contain):
    """Run ``load``; it must raise a short one-line ``DataError`` containing every string given."""
    with pytest.raises(DataError) as err:
        load()
    message = str(err.value)
    assert "\n" not in message and len(re.sub(r"/[^\s'\"()]*", "PATH", message)) < MAX_MESSAGE, message
    for text in must_contain:
        assert str(text) in message, message
    return message


def run_main(data_path, dataset, capsys):
    argv = ["--dataset", dataset, "--model", "sgd", "--lr", "0.1", "--data_path", str(data_path),
            "--n_epochs", "1", "--device", "cpu"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("main.py: error: ") and "\n" not in err and "Traceback" not in err
    return err


def dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# ----------------------------------------------------------------------------- 1. hostile CIFAR pickles

class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


class RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
def test_a_cifar_pickle_that_runs_code_is_refused_without_running_it(tmp_path, payload, capsys):
    write_tiny_cifar(tmp_path, "cifar10", 1, range(10))
    marker = tmp_path / "pwned"
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    dump(bad, {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": payload(str(marker))})
    one_line_error(get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits, bad, "refused")
    assert not marker.exists()
    err = run_main(tmp_path, "seq-cifar10", capsys)
    assert str(bad) in err and not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol):
    """What numpy's array pickles reference (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``,
    ``scalar``, ``_codecs.encode``) is allowed, under numpy 2.x names and numpy 1.x names alike."""
    x, y, _, _ = write_tiny_cifar(tmp_path, "cifar10", 1, range(10))
    folder = tmp_path / "cifar-10-batches-py"
    for i, name in enumerate(f"data_batch_{k}" for k in range(1, 6)):
        rows = slice(2 * i, 2 * i + 2)
        entry = {"data": x[rows].reshape(2, -1), "labels": np.asarray(y[rows]),  # an array of labels
                 "batch_label": b"training batch", "filenames": [b"a.png", b"b.png"], "n": np.int64(2)}
        dump(folder / name, entry, protocol)
        if protocol == 2:  # as numpy 1.x wrote it (the real CIFAR files): numpy.core, not numpy._core
            data = (folder / name).read_bytes()
            assert b"numpy._core.multiarray\n" in data
            (folder / name).write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    train, _ = get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits()
    np.testing.assert_array_equal(train.x.numpy(), x)
    np.testing.assert_array_equal(train.y.numpy(), y)


# ----------------------------------------------------------------------------- 2. damaged compressed / text files

def damage_gzip(data: bytes, damage: str) -> bytes:
    if damage == "invalid deflate data":  # the first deflate block made of the reserved type 3: zlib.error
        start = data.index(b"\0", 10) + 1 if data[3] & 0x08 else 10  # after the stored file name, if any
        return data[:start] + b"\x07" + data[start + 1:]
    if damage == "truncated":  # EOFError
        return data[: len(data) // 2]
    crc = bytes(b ^ 0xFF for b in data[-8:-4])  # gzip.BadGzipFile
    return data[:-8] + crc + data[-4:]


@pytest.mark.parametrize("damage", ["invalid deflate data", "truncated", "bad crc"])
def test_damaged_gzipped_mnist_file_is_one_line_naming_it(tmp_path, damage, capsys):
    raw = write_mnist(str(tmp_path), n_train=20, n_test=10, gz=True)
    bad = os.path.join(raw, MNIST_FILES["train"][0] + ".gz")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(damage_gzip(data, damage))
    one_line_error(SequentialMNIST(str(tmp_path)).load_splits, bad)
    assert bad in run_main(tmp_path, "seq-mnist", capsys)


@pytest.mark.parametrize("name", ["wnids.txt", os.path.join("val", "val_annotations.txt")])
def test_non_utf8_tinyimagenet_text_file_is_one_line_naming_it(tmp_path, name):
    folder, _, _ = write_tiny_imagenet(str(tmp_path), 2, 1, [0, 1])
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:3] + b"\xff\xfe" + data[3:])
    one_line_error(lambda: tinyimagenet.load_tinyimagenet(str(tmp_path), download=False, log=lambda m: None),
                   path, "UTF-8")


@pytest.mark.parametrize("name, content", [
    ("wnids.txt", "n001\n../../../elsewhere\n"),
    (os.path.join("val", "val_annotations.txt"), "/etc/hostname\tn{wnid}\t0\t0\t1\t1\n"),
    (os.path.join("val", "val_annotations.txt"), "../../train/x.JPEG\tn{wnid}\t0\t0\t1\t1\n"),
])
def test_tinyimagenet_names_that_leave_the_folder_are_refused(tmp_path, name, content):
    folder, wnids, _ = write_tiny_imagenet(str(tmp_path), 2, 1, [0, 1])
    with open(os.path.join(folder, name), "w") as f:
        f.write(content.replace("n{wnid}", wnids[0]))
    one_line_error(lambda: tinyimagenet.load_tinyimagenet(str(tmp_path), download=False, log=lambda m: None),
                   os.path.join(folder, name), "plain file name")


# ----------------------------------------------------------------------------- 3. stale TinyImageNet cache

def replace_with_same_size_jpeg(path, seed):
    """Overwrite a JPEG with a different image of exactly the same byte size (zero padding after the
    end-of-image marker, which decoders ignore); returns the new pixels as decoded."""
    size = os.path.getsize(path)
    for quality in (90, 75, 50, 25, 10):
        Image.fromarray(smooth_image(np.random.RandomState(seed))).save(path, quality=quality)
        if os.path.getsize(path) <= size:
            break
    with open(path, "ab") as f:
        f.write(b"\0" * (size - os.path.getsize(path)))
    assert os.path.getsize(path) == size
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def load_quietly(root, **options):
    messages = []
    train, test, _ = tinyimagenet.load_tinyimagenet(root, download=False, log=messages.append, **options)
    return train, messages


def test_a_jpeg_replaced_by_one_of_the_same_size_makes_the_cache_stale(tmp_path):
    folder, wnids, _ = write_tiny_imagenet(str(tmp_path), 2, 2, [0, 1])
    first, _ = load_quietly(str(tmp_path))
    path = os.path.join(folder, "train", sorted(wnids)[0], "images", f"{sorted(wnids)[0]}_1.JPEG")
    stat = os.stat(path)
    new_pixels = replace_with_same_size_jpeg(path, seed=7)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a later write, even on a coarse clock
    assert not np.array_equal(new_pixels, first.x[1].numpy())
    again, messages = load_quietly(str(tmp_path))
    assert "changed" in messages[0]
    np.testing.assert_array_equal(again.x[1].numpy(), new_pixels)


def test_rebuild_cache_checks_the_content_even_when_size_and_time_match(tmp_path):
    """A replacement that keeps size and modification time (e.g. copied with its time preserved) is
    found only by decoding again: ``rebuild_cache=True`` does that and rewrites the cache."""
    folder, wnids, _ = write_tiny_imagenet(str(tmp_path), 2, 2, [0, 1])
    first, _ = load_quietly(str(tmp_path))
    path = os.path.join(folder, "train", sorted(wnids)[0], "images", f"{sorted(wnids)[0]}_1.JPEG")
    stat = os.stat(path)
    new_pixels = replace_with_same_size_jpeg(path, seed=7)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stale, messages = load_quietly(str(tmp_path))
    assert messages == [] and torch.equal(stale.x, first.x)  # the documented limit of the fingerprint
    rebuilt, messages = load_quietly(str(tmp_path), rebuild_cache=True)
    assert "rebuild" in messages[0]
    np.testing.assert_array_equal(rebuilt.x[1].numpy(), new_pixels)
    after, messages = load_quietly(str(tmp_path))  # the rewritten cache is used from now on
    assert messages == [] and torch.equal(after.x, rebuilt.x)


def test_rebuild_cache_is_a_dataset_option(tmp_path, monkeypatch):
    import datasets.seq_tinyimg as seq_tinyimg
    seen = []

    def fake_load(root, rebuild_cache=False):
        seen.append(rebuild_cache)
        raise DataError("stop here")

    monkeypatch.setattr(seq_tinyimg, "load_tinyimagenet", fake_load)
    for flag in (False, True):
        with pytest.raises(DataError):
            get_dataset_class("seq-tinyimg")(str(tmp_path), rebuild_cache=flag).load_splits()
    assert seen == [False, True]
    assert get_dataset_class("seq-mnist")(str(tmp_path), rebuild_cache=True).rebuild_cache


# ----------------------------------------------------------------------------- 4. wrong values in data files

def write_cifar10_batch(root, data, labels, name="test_batch"):
    write_tiny_cifar(root, "cifar10", 1, range(10))
    path = root / "cifar-10-batches-py" / name
    dump(path, {"data": data, "labels": labels, "batch_label": "x"})
    return path


@pytest.mark.parametrize("data, labels, problem", [
    (np.full((2, 3072), 300.7), [0, 1], "pixel value 300.7"),
    (np.full((2, 3072), 12.5), [0, 1], "pixel value 12.5"),
    (np.full((2, 3072), np.nan), [0, 1], "pixel value nan"),
    (np.full((2, 3072), 256, np.int64), [0, 1], "pixel value 256"),
    (np.full((2, 3072), -1, np.int16), [0, 1], "pixel value -1"),
    (np.full((2, 3072), "a"), [0, 1], "pixel values of type <U1"),
    (np.zeros((2, 3072), np.uint8), [0.9, 1], "label 0.9"),
    (np.zeros((2, 3072), np.uint8), np.array([0.0, 1.5]), "label 1.5"),
    (np.zeros((2, 3072), np.uint8), [0, 10], "label 10"),
    (np.zeros((2, 3072), np.uint8), ["cat", "dog"], "labels of type <U3"),
])
def test_cifar_values_that_a_cast_would_change_are_refused(tmp_path, data, labels, problem):
    bad = write_cifar10_batch(tmp_path, data, labels)
    one_line_error(get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits, bad, problem)


def test_cifar_float_pixels_and_labels_with_integer_values_are_accepted(tmp_path):
    x = np.arange(2 * 3072).reshape(2, 3072) % 256
    write_cifar10_batch(tmp_path, x.astype(np.float32), np.array([1.0, 0.0]), name="data_batch_1")
    train, _ = get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits()
    np.testing.assert_array_equal(train.x[:2].reshape(2, -1).numpy(), x)
    assert train.y[:2].tolist() == [1, 0]


def idx_bytes(type_code, shape, payload=b""):
    return bytes([0, 0, type_code, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape) + payload


@pytest.mark.parametrize("content, problem", [
    (idx_bytes(0x08, [1] * 255, b"\0"), "255 dimensions"),
    (idx_bytes(0x08, []), "0 dimensions"),
    (idx_bytes(0x0D, [2], b"\0" * 8), "float"),
    (idx_bytes(0x42, [2], b"\0" * 2), "type code 0x42"),
    (idx_bytes(0x08, [2 ** 32 - 1] * 3, b"\0" * 10), "implies"),
    (idx_bytes(0x08, [3, 2], b"\0" * 7), "more"),
])
def test_malformed_idx_headers_are_short_clear_errors(tmp_path, content, problem):
    path = str(tmp_path / "train-images-idx3-ubyte")
    with open(path, "wb") as f:
        f.write(content)
    one_line_error(lambda: read_idx(path), path, problem)


def test_a_garbage_annotation_line_is_quoted_only_in_part(tmp_path):
    folder, _, _ = write_tiny_imagenet(str(tmp_path), 2, 1, [0, 1])
    path = os.path.join(folder, "val", "val_annotations.txt")
    with open(path, "w") as f:
        f.write("x" * 5000 + "\n")
    message = one_line_error(lambda: load_quietly(str(tmp_path)), path, "line 1")
    assert "x" * 150 in message and "x" * 300 not in message


# ----------------------------------------------------------------------------- 5. empty tasks

def test_mnist_without_classes_8_and_9_is_refused_naming_the_task(tmp_path, capsys):
    raw = write_mnist(str(tmp_path), n_train=40, n_test=20)
    labels = read_idx(os.path.join(raw, MNIST_FILES["train"][1]))
    write_idx(os.path.join(raw, MNIST_FILES["train"][1]), np.where(labels >= 8, labels - 8, labels))
    one_line_error(SequentialMNIST(str(tmp_path)).load_splits, "task 5", "classes 8-9", "training")
    err = run_main(tmp_path, "seq-mnist", capsys)
    assert "task 5" in err and "training" in err


def test_cifar_without_test_images_for_a_task_is_refused(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", 1, [0, 1, 2, 3, 6, 7, 8, 9])
    one_line_error(get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits, "task 3", "classes 4-5", "test")


def test_every_benchmark_goes_through_the_task_check(tmp_path, monkeypatch):
    """The check lives in the shared ``load_splits``: a benchmark only reads its files."""
    from datasets.utils.continual_dataset import Split
    for name in ("seq-digits", "seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg"):
        cls = get_dataset_class(name)
        k = cls.N_TASKS * cls.N_CLASSES_PER_TASK
        full = Split(torch.zeros(k, *cls.INPUT_SHAPE, dtype=torch.uint8), torch.arange(k))
        empty_last = Split(full.x[:-cls.N_CLASSES_PER_TASK], full.y[:-cls.N_CLASSES_PER_TASK])
        monkeypatch.setattr(cls, "read_splits", lambda self, s=empty_last: (full, s))
        one_line_error(cls(str(tmp_path)).load_splits, name, f"task {cls.N_TASKS}", "test")
        monkeypatch.setattr(cls, "read_splits", lambda self: (full, Split(full.x[:1], full.y[:1] + k)))
        one_line_error(cls(str(tmp_path)).load_splits, name, f"label {k}")


# ----------------------------------------------------------------------------- 6. failed downloads

def test_failed_mnist_download_leaves_no_empty_folder_and_gives_the_reason(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.mnist as tv_mnist

    def no_network(url, download_root, **kwargs):
        raise URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    data = tmp_path / "data"
    message = one_line_error(SequentialMNIST(str(data)).load_splits, "train-images-idx3-ubyte",
                             os.path.join(str(data), "MNIST", "raw"), "Temporary failure in name resolution")
    assert "t10k-labels-idx1-ubyte" in message
    assert not data.exists()  # data/, data/MNIST/ and data/MNIST/raw/ were all created by the attempt
    assert "Temporary failure" in run_main(data, "seq-mnist", capsys) and not data.exists()


def test_failed_download_keeps_folders_it_did_not_create(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def no_network(url, download_root, **kwargs):
        raise URLError("down")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    one_line_error(SequentialMNIST(str(tmp_path)).load_splits, "down")
    assert raw.is_dir()


def test_a_download_error_without_a_message_is_still_named(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def fails(self):
        os.makedirs(self.raw_folder)
        raise ConnectionResetError()

    monkeypatch.setattr(MNIST, "download", fails)
    one_line_error(SequentialMNIST(str(tmp_path / "d")).load_splits, "ConnectionResetError")
    assert not (tmp_path / "d").exists()


def test_failed_cifar_and_tinyimagenet_downloads_remove_the_folders_they_created(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    def no_network(url, download_root, *args, **kwargs):
        os.makedirs(download_root, exist_ok=True)  # as torchvision does before fetching
        raise URLError("")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    data = tmp_path / "data"
    one_line_error(lambda: cifar_io.load_cifar(str(data), "cifar10"), "data_batch_1", "URLError")
    assert not data.exists()
    one_line_error(lambda: tinyimagenet.load_tinyimagenet(str(data), log=lambda m: None), "wnids.txt", "URLError")
    assert not data.exists()
