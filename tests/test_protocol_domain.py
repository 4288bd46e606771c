"""Domain-incremental perm-mnist and rot-mnist: 20 tasks over the same 10 classes, each task MNIST through a
fixed pixel map of its own, a sample's task its domain; masking refused, Task-IL undefined."""
import json
import math

import pytest
import torch

import main as main_module
from datasets import get_dataset_class
from datasets.domain_mnist import BLANK, PIXELS, rotation_map
from tests.conftest import write_mnist
from utils.training import build_run, run_experiment, stages

FLAGS = ["--model", "er", "--buffer_size", "20", "--lr", "0.1", "--device", "cpu"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(str(root), n_train=60, n_test=30)
    return str(root)


def domains(name, mnist):
    dataset = get_dataset_class(name)(mnist)
    train, _ = dataset.load_splits()
    return dataset, train, dataset.to_device(train, "cpu")


def test_perm_mnist_tasks_differ_only_by_their_permutation(mnist):
    dataset, base, split = domains("perm-mnist", mnist)
    n = len(base.y)
    assert (dataset.N_TASKS, dataset.num_classes, len(split.y)) == (20, 10, 20 * n)
    assert split.task.tolist() == [t for t in range(20) for _ in range(n)]
    flat = base.x.flatten(1)
    maps = [dataset.pixel_map(t) for t in range(20)]
    for t, pixel_map in enumerate(maps):
        assert sorted(pixel_map.tolist()) == list(range(PIXELS))  # a permutation: no pixel lost or repeated
        rows = split.task == t
        assert torch.equal(split.y[rows], base.y)                 # the same samples and labels...
        assert torch.equal(split.x[rows].flatten(1), flat[:, pixel_map])  # ...through the task's permutation
    assert len({tuple(m.tolist()) for m in maps}) == 20
    assert torch.equal(maps[3], get_dataset_class("perm-mnist")("elsewhere").pixel_map(3))  # fixed: the benchmark's


def test_rot_mnist_tasks_are_rotations(mnist):
    dataset, base, split = domains("rot-mnist", mnist)
    assert torch.equal(rotation_map(0), torch.arange(PIXELS))
    quarter = rotation_map(90).view(28, 28)
    image = torch.arange(PIXELS).view(28, 28)
    assert torch.equal(quarter, torch.rot90(image, 1))  # counter-clockwise, as torch.rot90
    half = rotation_map(180).view(28, 28)
    assert torch.equal(half, torch.rot90(image, 2))
    assert (rotation_map(45) == BLANK).any()  # corners come from outside the image: black
    angles = [dataset.angle(t) for t in range(20)]
    assert all(0 <= a < 180 for a in angles) and len(set(angles)) == 20
    padded = torch.cat([base.x.flatten(1), torch.zeros(len(base.y), 1, dtype=torch.uint8)], 1)
    for t in (0, 7):
        rows = split.task == t
        assert torch.equal(split.y[rows], base.y)
        assert torch.equal(split.x[rows].flatten(1), padded[:, rotation_map(angles[t])])


def test_stages_are_domains_and_results_have_no_task_il(mnist, make_args):
    args = make_args("--dataset", "perm-mnist", *FLAGS, "--data_path", mnist, "--n_tasks", "3",
                     "--validation", "20")
    run = build_run(args)
    assert run.task_of_class.tolist() == [0] * 10 and run.model.net.head.weight.shape[0] == 10
    tasks = stages(run)
    assert len(tasks) == 20 and all(len(d) == 50 for d in tasks)  # 60 images: 1 of 6 per class held out
    assert all(torch.equal(torch.unique(run.train.task[d.indices]), torch.tensor([d.task])) for d in tasks)
    res = run_experiment(args, log=quiet)
    assert res["setting"] == "domain-il" and res["partial"] is True
    assert res["task_il"] is None and res["acc_matrix_task_il"] is None and res["fwt_task_il"] is None
    assert res["avg_incremental_task_il"] is None and res["validation"]["task_il"] is None
    assert [len([a for a in row if a is not None]) for row in res["acc_matrix_class_il"]] == [1, 2, 3]
    assert len(res["acc_matrix_class_il"][0]) == 20 and res["fwt_class_il"] is not None
    assert res["splits"]["samples"] == {"train": 20 * 50, "validation": 20 * 10, "test": 20 * 30}


@pytest.mark.parametrize("flags,words", [
    (["--masked_softmax", "1"], ["--masked_softmax 1", "domain-incremental", "--masked_softmax 0"]),
    (["--class_order", "2"], ["--class_order", "domain-incremental"]),
    (["--collapse_metrics", "1"], ["--collapse_metrics", "domain-incremental"]),
])
@pytest.mark.parametrize("name", ["perm-mnist", "rot-mnist"])
def test_masking_and_class_orders_are_refused_in_one_line(capsys, name, flags, words):
    with pytest.raises(SystemExit) as exc:
        main_module.main(["--dataset", name] + FLAGS + flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_alias_masking_is_refused_naming_the_alias(capsys):
    with pytest.raises(SystemExit):
        main_module.main(["--dataset", "perm-mnist", "--model", "orthermr", "--buffer_size", "20", "--lr", "0.1"])
    assert "implied by --model orthermr" in capsys.readouterr().err


def test_main_runs_rot_mnist(mnist, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main_module.main(["--dataset", "rot-mnist"] + FLAGS + ["--data_path", mnist, "--n_tasks", "2",
                                                                   "--results_file", str(out)]) == 0
    assert "Task-IL n/a (domain-IL)" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["task_il"] is None and math.isfinite(res["class_il"]) and res["n_steps"] == 2 * 1  # 60 / 128
