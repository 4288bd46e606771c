import gzip
import os

import numpy as np
import pytest
import torch

from datasets.seq_digits import SequentialDigits, stratified_split
from datasets.seq_mnist import SequentialMNIST
from datasets.utils.idx import read_idx, write_idx
from tests.conftest import write_mnist
from utils.errors import DataError


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
    write_mnist(str(tmp_path), n_train=50, n_test=30, gz=gz)
    train, test = SequentialMNIST(str(tmp_path)).load_splits()
    assert train.x.shape == (50, 1, 28, 28) and train.x.dtype == torch.uint8
    assert test.y.tolist() == [i % 10 for i in range(30)]


def test_idx_round_trip_and_corruption(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / "x-idx3-ubyte")
    write_idx(path, a)
    assert np.array_equal(read_idx(path), a)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(DataError, match="corrupt"):
        read_idx(path)
    with open(path, "wb") as f:
        f.write(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)
    bad_gz = str(tmp_path / "y.gz")
    with open(bad_gz, "wb") as f:
        f.write(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(bad_gz)


def test_mnist_missing_files_name_files_and_folder(tmp_path):
    raw = write_mnist(str(tmp_path), n_train=20, n_test=10)
    os.remove(os.path.join(raw, "t10k-labels-idx1-ubyte"))
    with pytest.raises(DataError) as exc:
        SequentialMNIST(str(tmp_path)).load_splits()
    msg = str(exc.value)
    assert "t10k-labels-idx1-ubyte" in msg and raw in msg and "\n" not in msg


def test_mnist_image_label_count_mismatch(tmp_path):
    raw = write_mnist(str(tmp_path), n_train=20, n_test=10)
    write_idx(os.path.join(raw, "train-labels-idx1-ubyte"), np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        SequentialMNIST(str(tmp_path)).load_splits()


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = SequentialDigits("unused").load_splits()
    assert train.x.shape[1:] == (1, 8, 8) and int(train.x.max()) <= 16
    assert len(train.y) + len(test.y) == 1797
    frac = torch.bincount(test.y, minlength=10).float() / (torch.bincount(test.y, minlength=10)
                                                            + torch.bincount(train.y, minlength=10))
    assert ((frac - 0.2).abs() < 0.01).all()
    train2, _ = SequentialDigits("unused").load_splits()
    assert torch.equal(train.x, train2.x)
    labels = np.repeat(np.arange(3), 10)
    tr, te = stratified_split(labels, 0.2, 0)
    assert not set(tr) & set(te) and len(te) == 6


def test_task_of_class_is_consecutive_pairs():
    assert SequentialDigits("x").task_of_class().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
