"""Work that must not be lost: a validation split that holds out nothing is refused before training, a run
whose results hold a NaN is still written, a resume on other data is refused, and a CIFAR pickle of shared
references is refused before it is converted."""
import json
import os
import pickle

import numpy as np
import pytest

import main
from datasets import get_dataset_class
from tests.conftest import write_mnist
from tests.test_data_reliability import write_tiny_cifar
from utils import entry
from utils.errors import DataError
from utils.io import finite_only

MNIST = ["--dataset", "seq-mnist", "--model", "sgd", "--lr", "0.1", "--n_epochs", "1", "--device", "cpu",
         "--nowand", "1"]


def one_line(text: str, *words: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_a_cifar_pickle_of_shared_references_is_refused_before_converting(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", 1, range(10))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    row = [0] * 3072
    with open(path, "wb") as f:  # 10^4 rows by reference: 40 kB on disk, 250 MB once converted
        pickle.dump({"data": [row] * 10 ** 4, "labels": [0] * 10 ** 4, "batch_label": "x"}, f)
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match="its 'data' is 'list' .expected an N x 3072 array."):
        get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits()


def test_nested_cifar_labels_are_refused_before_converting(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", 1, range(10))
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [[0] * 1000] * 2, "batch_label": "x"}, f)
    with pytest.raises(DataError, match="expected a flat list of 2"):
        get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits()


@pytest.mark.parametrize("pct", ["0.1", "99"])
def test_a_validation_split_that_holds_out_no_sample_of_a_class_is_refused(capsys, tmp_path, pct):
    write_mnist(str(tmp_path / "data"))  # 20 training samples per class
    code = main.main(MNIST + ["--data_path", str(tmp_path / "data"), "--validation", pct,
                              "--results_file", str(tmp_path / "r.json")])
    assert code == 2
    one_line(capsys.readouterr().err, f"--validation {pct}", "percentage", "between 2.5 and 97.5")
    assert not (tmp_path / "r.json").exists()


def test_results_with_a_nan_are_written_with_null_and_named(capsys, tmp_path):
    args = type("Args", (), {"results_file": str(tmp_path / "r.json"), "checkpoint_dir": None})()
    entry.save_results(args, {"class_il": 50.0, "validation": {"class_il": float("nan")}, "rows": [1.0, float("inf")]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"class_il": 50.0, "validation": {"class_il": None},
                                                             "rows": [1.0, None]}
    one_line(capsys.readouterr().err, "validation.class_il", "rows[1]", "null")
    assert finite_only({"a": [1, 2.5]}) == ({"a": [1, 2.5]}, [])


def test_resuming_on_other_data_is_refused(capsys, tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        write_mnist(str(tmp_path / name), seed=seed)
    checkpoint = str(tmp_path / "ckpt")
    assert main.main(MNIST + ["--data_path", str(tmp_path / "a"), "--checkpoint_dir", checkpoint,
                              "--results_file", "none"]) == 0
    capsys.readouterr()
    code = main.main(MNIST + ["--data_path", str(tmp_path / "b"), "--checkpoint_dir", checkpoint, "--resume",
                              "--results_file", "none"])
    assert code == 2
    one_line(capsys.readouterr().err, "other training data", f"--data_path {tmp_path / 'b'}",
             "delete it or use another --checkpoint_dir")
    assert main.main(MNIST + ["--data_path", str(tmp_path / "a"), "--checkpoint_dir", checkpoint, "--resume",
                              "--results_file", "none"]) == 0


# ---- tracebacks where one line belongs ----

def test_a_replay_batch_of_one_under_batch_norm_is_one_line(capsys):
    code = main.main(["--dataset", "seq-digits", "--backbone", "resnet18", "--model", "derpp", "--buffer_size", "10",
                      "--minibatch_size", "1", "--alpha", "0.1", "--beta", "0.5", "--lr", "0.1", "--n_epochs", "1",
                      "--device", "cpu", "--debug_mode", "1", "--results_file", "none", "--nowand", "1"])
    assert code == 2
    one_line(capsys.readouterr().err, "batch norm", "--minibatch_size 1", "--backbone resnet18")


def test_a_decompression_bomb_is_one_line_in_every_image_reader(tmp_path, monkeypatch):
    from PIL import Image

    from datasets.utils.image_folders import decode_square
    from datasets.utils.tinyimagenet import decode_jpeg
    from longtail.data import ImageListDataset
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels: more than twice the limit, a "bomb"
    for read in (lambda: decode_jpeg(str(path)), lambda: decode_square(str(path)),
                 lambda: ImageListDataset(str(tmp_path), "list.txt", [("big.png", 0, 1)], None)[0]):
        with pytest.raises(DataError, match="DecompressionBomb|decompression bomb"):
            read()


@pytest.mark.parametrize("rel", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_split_lists_cannot_name_images_outside_the_data_folder(tmp_path, rel):
    from longtail.data import read_split_list
    path = tmp_path / "ImageNet_LT_train.txt"
    path.write_text(f"train/ok.jpg 0\n{rel} 1\n")
    with pytest.raises(DataError, match="line 2: .* leaves the data folder"):
        read_split_list(str(path), 10)


# ---- silent or misleading ----

def test_a_folder_where_an_idx_file_belongs_is_named_not_downloaded(tmp_path):
    raw = write_mnist(str(tmp_path))
    os.remove(os.path.join(raw, "train-images-idx3-ubyte"))
    os.mkdir(os.path.join(raw, "train-images-idx3-ubyte"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not a file .a folder"):
        get_dataset_class("seq-mnist")(str(tmp_path)).load_splits()


def test_an_imbalance_ratio_that_empties_classes_is_one_warning_line(capsys):
    from types import SimpleNamespace

    from longtail.batches import check_counts
    from longtail.data import long_tail_counts
    counts = long_tail_counts(5000, 10, 1e9)
    assert counts[:4] == [5000, 500, 50, 5] and counts[4:] == [0] * 6
    args = SimpleNamespace(dataset="cifar10-lt", imbalance_ratio=1e9)
    assert check_counts(args, counts) == counts
    assert capsys.readouterr().err == ("warning: 6 of the 10 classes have no training image (--imbalance_ratio "
                                       "1e+09): 4, 5, 6, 7, 8, 9\n")
    check_counts(args, counts, warn=False)  # the other processes of the run: one line per run
    assert capsys.readouterr().err == ""


def test_a_resume_refusal_names_model_not_model_name():
    from utils.checkpoint import differing_flags
    assert differing_flags({"model_name": "er", "lr": 0.1}, {"model_name": "fno-er", "lr": 0.1}) == [
        "--model fno-er (checkpoint: er)"]


@pytest.mark.parametrize("n,batch,sizes", [(5, 2, [2, 3]), (4, 2, [2, 2]), (1, 2, [1]), (7, 3, [3, 4])])
def test_long_tail_last_batch_of_one_joins_the_previous_one(n, batch, sizes):
    import torch

    from datasets.utils.continual_dataset import Split
    from datasets.utils.transforms import DeviceTransform
    from longtail.batches import ResidentBatches
    from longtail.processes import Processes
    split = Split(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n))
    batches = ResidentBatches(split, DeviceTransform(scale=255.0), batch, Processes.from_environment(),
                              torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    got = [len(y) for _, y in batches.epoch(0)]
    assert got == sizes and len(batches) == len(sizes)


def test_wandb_run_files_go_beside_the_results_not_into_the_working_directory(tmp_path, monkeypatch):
    from tests.test_wandb import RUN, Recorder
    from utils.args import parse_args
    from utils.wandb_logger import WandbLogger
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    recorder = Recorder()
    monkeypatch.setitem(__import__("sys").modules, "wandb", recorder.module)
    WandbLogger(parse_args(RUN + ["--wandb_project", "p", "--results_file", str(tmp_path / "sub" / "r.json")]))
    assert recorder.init_kwargs["dir"] == str(tmp_path / "sub")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))  # the user's choice, which wandb reads itself
    WandbLogger(parse_args(RUN + ["--wandb_project", "p", "--results_file", str(tmp_path / "r.json")]))
    assert "dir" not in recorder.init_kwargs


def test_an_empty_long_tail_training_set_is_named_not_blamed_on_the_lr():
    from types import SimpleNamespace

    from longtail.batches import check_counts
    with pytest.raises(DataError, match="imagenet-lt: the training set is empty; check --data_path"):
        check_counts(SimpleNamespace(dataset="imagenet-lt", imbalance_ratio=None), [0, 0])
