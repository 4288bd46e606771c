"""Small items: results files are never overwritten silently; the corrupt-IDX and MNIST download messages say
plainly what is wrong and what to do; the LICENSE and CITATION.cff files; main_lt.py --help's metavars."""
import json
import os
import subprocess
import sys

import pytest

import main as main_module
from datasets.seq_mnist import MNIST_MIRRORS
from datasets.utils.idx import read_idx
from utils.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_finished_run_is_not_run_again_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "r.json"
    flags = ["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--debug_mode", "1", "--device", "cpu",
             "--results_file", str(out)]
    assert main_module.main(flags) == 0
    first = json.loads(out.read_text())
    out.write_text(json.dumps({**first, "class_il": -1.0}))  # marks the file: a rerun would replace it
    capsys.readouterr()
    assert main_module.main(flags) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == (f"results exist: {out}: this configuration is finished, not run again (--overwrite 1 runs "
                       f"it again and replaces them)")
    assert json.loads(out.read_text())["class_il"] == -1.0
    # the same file asked of another configuration: refused in one line, never overwritten
    assert main_module.main(flags[:-2] + ["--seed", "5"] + flags[-2:]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"main.py: error: {out} exists and it holds another run's results: --seed 5 (the file's: 0); "
                   f"give another --results_file, or --overwrite 1 to replace it")
    out.write_text("{")
    assert main_module.main(flags) == 2 and "exists and it is not a results file" in capsys.readouterr().err
    assert main_module.main(flags + ["--overwrite", "1"]) == 0
    assert json.loads(out.read_text())["class_il"] == first["class_il"]


def test_seeds_with_some_results_written_name_them(tmp_path, capsys):
    template = str(tmp_path / "r-{seed}.json")
    (tmp_path / "r-2.json").write_text(json.dumps({"args": {"seed": 2}}))
    flags = ["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--debug_mode", "1", "--device", "cpu",
             "--seeds", "1-3", "--results_file", template]
    assert main_module.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"main.py: error: 1 of the 3 seeds' results exist ({tmp_path / 'r-2.json'}): give --seeds with "
                   f"the others only, or --overwrite 1")


def test_a_short_idx_file_says_items_and_bytes_plainly(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28)) + b"\0" * 992)
    with pytest.raises(DataError) as info:
        read_idx(str(path))
    assert str(info.value) == (f"{path} is corrupt: its header (60000 x 28 x 28) implies 60000 items of 784 bytes, "
                               f"47040000 bytes of data, but the file holds 992 bytes of data")


def test_the_mnist_download_error_names_the_manual_download(tmp_path, monkeypatch):
    from datasets import seq_mnist
    monkeypatch.setattr(seq_mnist, "try_download_mnist", lambda root: "OSError: no network")
    with pytest.raises(DataError) as info:
        seq_mnist.SequentialMNIST(str(tmp_path)).load_splits()
    text = str(info.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in text and "train-images-idx3-ubyte" in text
    assert "download failed (OSError: no network); fetch the .gz files by hand from" in text
    assert all(url in text for url in MNIST_MIRRORS)


def test_license_and_citation():
    license_text = open(os.path.join(ROOT, "LICENSE")).read()
    assert license_text.startswith("MIT License") and "MIT" in open(os.path.join(ROOT, "setup.cfg")).read()
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load(open(os.path.join(ROOT, "CITATION.cff")))
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == ("Fixed Non-negative Orthogonal Classifier: Inducing Zero-mean Neural Collapse with "
                              "Feature Dimension Separation")
    assert paper["year"] == 2024 and "ICLR" in paper["conference"]["name"]
    assert [a["family-names"] for a in paper["authors"]] == ["Kim", "Kim"]


def test_main_lt_help_has_metavars_and_debug_mode():
    from longtail.args import build_parser
    text = " ".join(build_parser().format_help().split())
    for shown in ("--n_epochs INT", "--lr FLOAT", "--momentum FLOAT", "--channels_last {0,1}",
                  "--debug_mode {0,1}", "--workers INT"):
        assert shown in text, shown


def test_main_lt_debug_mode_is_a_short_partial_run(tmp_path, capsys, monkeypatch):
    from tests.test_long_tail import N_PER_CLASS, run_main, write_tiny_cifar
    from longtail import trainer
    from longtail.args import DEBUG_STEPS
    steps = []
    step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda *a: steps.append(1) or step(*a))
    data = write_tiny_cifar(tmp_path / "cifar", N_PER_CLASS, 6)
    out = tmp_path / "r.json"
    code, io = run_main(["--dataset", "cifar10-lt", "--method", "ce", "--width", "4", "--batch_size", "4",
                         "--device", "cpu", "--debug_mode", "1", "--data_path", data, "--results_file", str(out),
                         "--nowand", "1"], capsys)
    assert code == 0, io.err
    results = json.loads(out.read_text())
    assert results["partial"] is True and results["args"]["n_epochs"] == 1 and results["args"]["warmup_epochs"] == 0
    assert len(steps) == DEBUG_STEPS  # one epoch of DEBUG_STEPS steps (the tiny data hold more batches)
