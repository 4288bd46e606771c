"""Every results file says what data produced it: the files read (sizes, a content hash cached beside the data),
"embedded" or "synthetic", the samples of every task, and a warning when the files are not the benchmark's size.
``--synthetic 1`` runs any benchmark on generated data of its shapes and classes, with no files."""
import hashlib
import json
import os

import pytest

import main as main_module
from datasets import dataset_names, get_dataset_class
from datasets.utils.provenance import HASH_CACHE
from tests.conftest import write_mnist


def run_main(capsys, *flags):
    assert main_module.main(["--device", "cpu", "--debug_mode", "1", *flags]) == 0
    return capsys.readouterr().out


def test_undersized_mnist_files_are_named_hashed_and_warned_about(tmp_path, capsys):
    raw = write_mnist(str(tmp_path / "data"))  # 200 training and 100 test images: not MNIST's 60,000 / 10,000
    out = tmp_path / "r.json"
    flags = ["--dataset", "seq-mnist", "--model", "sgd", "--lr", "0.1", "--data_path", str(tmp_path / "data"),
             "--results_file", str(out)]
    printed = run_main(capsys, *flags)
    data = json.loads(out.read_text())["data"]
    assert data["source"] == "files" and data["root"] == raw
    names = sorted(os.listdir(raw))
    assert sorted(f["path"] for f in data["files"]) == [n for n in names if n != HASH_CACHE]
    assert all(f["bytes"] == os.path.getsize(os.path.join(raw, f["path"])) for f in data["files"])
    digest = hashlib.sha256()  # the documented hash: every file's relative path and bytes, sorted
    for name in sorted(f["path"] for f in data["files"]):
        digest.update(name.encode() + b"\0" + open(os.path.join(raw, name), "rb").read())
    assert data["sha256"] == digest.hexdigest()
    warning = ("seq-mnist: the data hold 200 training and 100 test samples, not the benchmark's 60000 and 10000")
    assert data["warning"].startswith(warning) and f"warning: {warning}" in printed
    assert data["samples_read"] == {"train": 200, "test": 100}
    assert data["train_per_task"] == [40] * 5 and data["test_per_task"] == [20] * 5
    # computed once: the next run takes the hash from the cache beside the data (a planted value proves it)
    cache = json.loads((tmp_path / "data" / "MNIST" / "raw" / HASH_CACHE).read_text())
    (tmp_path / "data" / "MNIST" / "raw" / HASH_CACHE).write_text(json.dumps({**cache, "sha256": "planted"}))
    run_main(capsys, *flags, "--overwrite", "1")
    assert json.loads(out.read_text())["data"]["sha256"] == "planted"
    # a changed file changes the key: the hash is computed again
    with open(os.path.join(raw, "t10k-labels-idx1-ubyte"), "ab") as f:
        f.write(b"")
    os.utime(os.path.join(raw, "t10k-labels-idx1-ubyte"), ns=(1, 1))
    run_main(capsys, *flags, "--overwrite", "1")
    assert json.loads(out.read_text())["data"]["sha256"] == digest.hexdigest()


def test_embedded_digits_say_so_without_a_warning(tmp_path, capsys):
    out = tmp_path / "r.json"
    printed = run_main(capsys, "--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--results_file", str(out))
    data = json.loads(out.read_text())["data"]
    assert data["source"] == "embedded" and data["warning"] is None and "warning" not in printed
    assert data["samples_read"] == data["canonical_samples"] == {"train": 1438, "test": 359}
    assert sum(data["train_per_task"]) == 1438


@pytest.mark.parametrize("name", dataset_names())
def test_every_benchmark_has_a_synthetic_twin_of_its_shapes_and_classes(name, tmp_path):
    dataset = get_dataset_class(name)(str(tmp_path / "none"), synthetic=True)
    train, test = dataset.load_splits()  # no file is read: the folder does not exist
    assert tuple(train.x.shape[1:]) == tuple(dataset.INPUT_SHAPE) and str(train.x.dtype) == "torch.uint8"
    assert sorted(set(train.y.tolist())) == sorted(set(test.y.tolist())) == list(range(dataset.num_classes))
    assert int(train.x.max()) <= dataset.TRANSFORM.scale
    assert dataset.provenance()["source"] == "synthetic" and not os.path.exists(tmp_path / "none")


def test_a_synthetic_run_needs_no_files_and_is_marked(tmp_path, capsys):
    out = tmp_path / "r.json"
    run_main(capsys, "--dataset", "seq-cifar10", "--model", "derpp", "--buffer_size", "200", "--load_best_args",
             "--synthetic", "1", "--backbone", "mlp", "--n_tasks", "2", "--data_path", str(tmp_path / "none"),
             "--results_file", str(out))
    results = json.loads(out.read_text())
    assert results["data"]["source"] == "synthetic" and results["partial"] is True
    assert results["args"]["synthetic"] == 1 and not os.path.exists(tmp_path / "none")
