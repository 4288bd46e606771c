"""--validation (a stratified, seeded hold-out of each task's training data) and --class_order (classes
permuted before they are cut into tasks)."""
import json

import numpy as np
import pytest
import torch

import main as main_module
from datasets.utils.continual_dataset import class_permutation, stratified_holdout
from utils.checkpoint import CHECKPOINT_FILE
from utils.losses import mask_other_tasks
from utils.training import build_run, run_experiment

ER = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--n_epochs", "1"]


def quiet(*_):
    pass


# ------------------------------------------------------------------------------------------- validation

def test_holdout_is_disjoint_stratified_and_fixed_by_the_seed():
    groups = torch.tensor([0] * 50 + [1] * 30 + [2] * 7 + [3] * 100)
    kept, held = stratified_holdout(groups, 10, seed=4)
    assert not set(kept.tolist()) & set(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(groups)))
    assert torch.bincount(groups[held]).tolist() == [5, 3, 1, 10]  # round(10% of each group)
    again_kept, again_held = stratified_holdout(groups, 10, seed=4)
    assert torch.equal(held, again_held) and torch.equal(kept, again_kept)
    assert not torch.equal(held, stratified_holdout(groups, 10, seed=5)[1])


def test_validation_split_of_a_run(make_args):
    full = build_run(make_args(*ER))
    run = build_run(make_args(*ER, "--validation", "10"))
    kept, held = stratified_holdout(full.train.task * 10 + full.train.y, 10, seed=0)
    assert torch.equal(run.train.x, full.train.x[kept]) and torch.equal(run.validation.x, full.train.x[held])
    assert torch.equal(run.validation.y, full.train.y[held]) and torch.equal(run.validation.task, full.train.task[held])
    share = torch.bincount(run.validation.y, minlength=10) / torch.bincount(full.train.y, minlength=10)
    assert ((share - 0.1).abs() < 0.02).all()  # every class, hence every task
    assert torch.equal(run.test.x, full.test.x)  # the test split is untouched
    other = build_run(make_args(*ER, "--validation", "10", "--seed", "1"))
    assert not torch.equal(other.validation.x, run.validation.x)


def test_results_say_which_split(make_args):
    res = run_experiment(make_args(*ER, "--validation", "10"), log=quiet)
    assert res["splits"]["headline"] == "test" and "class_il" in res["splits"]["on_test"]
    assert res["splits"]["on_validation"] == ["validation"]
    val = res["validation"]
    assert set(val) == {"class_il", "task_il", "acc_matrix_class_il", "acc_matrix_task_il"}
    assert val["class_il"] == pytest.approx(np.mean(val["acc_matrix_class_il"][-1]))
    assert val["class_il"] != res["class_il"]  # a different split gives (here) a different number
    samples = res["splits"]["samples"]
    assert (samples["validation"], samples["train"] + samples["validation"], samples["test"]) == (143, 1438, 359)
    plain = run_experiment(make_args(*ER), log=quiet)
    assert plain["validation"] is None and plain["splits"]["on_validation"] == []


# ------------------------------------------------------------------------------------------ class order

def test_class_permutation():
    assert class_permutation(10, 0) is None
    perm = class_permutation(10, 3)
    assert sorted(perm.tolist()) == list(range(10))
    assert torch.equal(perm, class_permutation(10, 3)) and not torch.equal(perm, class_permutation(10, 4))


def test_class_order_cuts_tasks_from_the_permuted_classes(make_args):
    natural = build_run(make_args(*ER))
    run = build_run(make_args(*ER, "--class_order", "3"))
    perm = torch.tensor(run.class_order)
    assert torch.equal(perm, class_permutation(10, 3))
    for split, ref in ((run.train, natural.train), (run.test, natural.test)):
        assert torch.equal(split.x, ref.x)  # the same samples, renamed
        assert torch.equal(perm[split.y], ref.y)  # label l is original class perm[l]
        for t in range(5):  # task t holds the original classes perm[2t], perm[2t + 1]
            assert set(ref.y[split.task == t].tolist()) == set(perm[2 * t:2 * t + 2].tolist())
    assert not torch.equal(run.test.task, natural.test.task)


def test_task_il_and_masking_use_the_permuted_tasks(make_args):
    """Task-IL evaluation and the masked softmax keep, for a sample of original class c, exactly the
    original classes of c's permuted task; per-task accuracies are reported by permuted task."""
    run = build_run(make_args(*ER, "--class_order", "3"))
    perm = torch.tensor(run.class_order)
    assert torch.equal(run.task_of_class[run.test.y], run.test.task)
    y = run.test.y
    kept = mask_other_tasks(torch.zeros(len(y), 10), y, run.task_of_class) == 0  # what Task-IL and masking keep
    for label, row in zip(y.tolist(), kept):
        task = label // 2
        assert set(perm[row].tolist()) == set(perm[2 * task:2 * task + 2].tolist())
    counts = torch.bincount(run.test.task).tolist()
    by_original = [sum(int((perm[y] == c).sum()) for c in perm[2 * t:2 * t + 2].tolist()) for t in range(5)]
    assert counts == by_original


def test_class_order_is_stored_in_results_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "r.json"
    flags = ER + ["--class_order", "3", "--device", "cpu", "--results_file", str(out),
                  "--checkpoint_dir", str(tmp_path / "ck")]
    assert main_module.main(flags) == 0
    res = json.loads(out.read_text())
    assert res["class_order"] == class_permutation(10, 3).tolist() and res["args"]["class_order"] == 3
    saved = torch.load(tmp_path / "ck" / CHECKPOINT_FILE, weights_only=True)
    assert saved["history"]["class_order"] == res["class_order"]
    natural = tmp_path / "n.json"
    assert main_module.main(ER + ["--device", "cpu", "--results_file", str(natural)]) == 0
    assert json.loads(natural.read_text())["class_order"] is None
