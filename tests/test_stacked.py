"""Stacked seeds (utils/stacked/, ``--seeds``): each seed of a stacked run computes what the single run with
that seed computes - losses, weights, batch-norm statistics, buffer, random streams, results, checkpoints."""
import argparse

import pytest
import torch

from tests.test_image_datasets import write_tiny_cifar
from utils.args import parse_args
from utils.buffer import ReservoirBuffer
from utils.errors import UserError
from utils.progress import ProgressBar
from utils.seeds import parse_seeds, seed_args
from utils.stacked.trainer import run_stacked, shared_dataset, train_stacked_stage
from utils.stacked.buffer import StackedBuffer
from utils.training import build_run, run_experiment, stages, train_stage

SEEDS = [1, 2, 3]
# When and from which commit a run started differ between a stacked run and single runs made after it.
TIMING = ("wall_time_s", "train_time_s", "start_time", "git_commit", "git_dirty")


def digits_args(*flags):
    return parse_args(["--dataset", "seq-digits", "--device", "cpu", "--results_file", "none", "--nowand", "1",
                       *flags])


class Losses:
    """A trainer callback keeping every step's loss."""

    def __init__(self):
        self.values = []

    def on_step(self, run, task, step, total, loss):
        self.values.append(float(loss))


def train_single(args, seed, n_stages):
    run = build_run(seed_args(args, seed))
    losses = Losses()
    for data in stages(run)[:n_stages]:
        train_stage(run, data, [losses])
    return run, losses.values


def train_stacked(args, seeds, n_stages):
    dataset = shared_dataset(args)
    runs = [build_run(seed_args(args, seed), dataset) for seed in seeds]
    losses = []
    for stage in range(n_stages):
        train_stacked_stage(runs, [stages(run)[stage] for run in runs],
                            step_hook=lambda task, step, values: losses.append(values.clone()))
    return runs, torch.stack(losses, 1)  # (seeds, steps)


@pytest.mark.parametrize("method", [
    ["--model", "er", "--buffer_size", "200", "--load_best_args"],
    ["--model", "derpp", "--buffer_size", "200", "--load_best_args"],
])
@pytest.mark.parametrize("masked", ["0", "1"])
@pytest.mark.parametrize("head", ["fc", "fno"])
def test_first_200_steps_match_single_runs(method, masked, head):
    """200 steps (4 tasks x 50): every seed's losses equal its single run's to 1e-5 (on the CPU the
    weights are bitwise equal and the losses differ at most in the last bit, docs/stacked.md)."""
    args = digits_args(*method, "--masked_softmax", masked, "--classifier", head, "--max_steps_per_task", "50")
    runs, stacked = train_stacked(args, SEEDS, 4)
    assert stacked.shape == (len(SEEDS), 200)
    for i, seed in enumerate(SEEDS):
        single_run, single = train_single(args, seed, 4)
        torch.testing.assert_close(stacked[i], torch.tensor(single), rtol=1e-5, atol=0)
        for name, value in single_run.model.net.state_dict().items():
            torch.testing.assert_close(runs[i].model.net.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)
        assert runs[i].model.buffer.num_seen == single_run.model.buffer.num_seen
        for name, field in single_run.model.buffer.fields.items():
            torch.testing.assert_close(runs[i].model.buffer.fields[name][:-1], field[:-1], rtol=1e-5, atol=1e-6)
        for ours, theirs in ((runs[i].data_generator, single_run.data_generator),
                             (runs[i].augment_generator, single_run.augment_generator),
                             (runs[i].model.setting.buffer_generator, single_run.model.setting.buffer_generator)):
            assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize("flags", [
    ["--model", "der", "--buffer_size", "200", "--load_best_args", "--masked_softmax", "1", "--classifier", "etf"],
    ["--model", "sgd", "--lr", "0.1", "--classifier", "orth"],
])
def test_der_and_sgd_with_the_other_fixed_heads(flags):
    args = digits_args(*flags, "--max_steps_per_task", "20")
    _, stacked = train_stacked(args, SEEDS[:2], 3)
    for i, seed in enumerate(SEEDS[:2]):
        torch.testing.assert_close(stacked[i], torch.tensor(train_single(args, seed, 3)[1]), rtol=1e-5, atol=0)


def test_run_stacked_returns_each_seeds_run_experiment_results():
    """The whole protocol (evaluations, forward transfer, metrics): the same results dictionary, field for
    field, as run_experiment with each seed; only the timings differ."""
    args = digits_args("--model", "er", "--buffer_size", "200", "--load_best_args", "--masked_softmax", "1",
                       "--classifier", "fno", "--n_epochs", "1")
    stacked = run_stacked(args, SEEDS[:2], log=lambda line: None, progress=ProgressBar(enabled=False))
    for seed, ours in zip(SEEDS[:2], stacked):
        single = run_experiment(seed_args(args, seed), progress=ProgressBar(enabled=False), log=lambda line: None)
        assert ours["args"]["seed"] == seed
        assert set(ours) == set(single)
        for key in set(single) - set(TIMING):
            assert ours[key] == single[key], key


def test_stacked_resnet_keeps_each_seeds_batch_norm_statistics(tmp_path):
    """ResNet-18 (narrow) on tiny CIFAR files: grouped convolutions and one batch norm over every seed's
    channels; each seed's running statistics equal its single run's, and differ from the other seed's.
    Equal to rounding only: grouped and plain convolutions sum in other orders, and a few steps of a batch-8
    ResNet turn a 1e-6 difference into 1e-4 (a single run perturbed by 1e-6 does the same)."""
    write_tiny_cifar(tmp_path, "cifar10", 8, list(range(10)))
    args = parse_args(["--dataset", "seq-cifar10", "--model", "er", "--buffer_size", "200", "--load_best_args",
                       "--classifier", "fno", "--masked_softmax", "1", "--backbone", "resnet18-narrow",
                       "--batch_size", "8", "--minibatch_size", "8", "--lr", "0.001", "--max_steps_per_task", "2",
                       "--device", "cpu", "--data_path", str(tmp_path), "--results_file", "none", "--nowand", "1"])
    runs, stacked = train_stacked(args, SEEDS[:2], 2)
    singles = [train_single(args, seed, 2) for seed in SEEDS[:2]]
    checked = 0
    for i, (single_run, single_losses) in enumerate(singles):
        torch.testing.assert_close(stacked[i], torch.tensor(single_losses), rtol=1e-4, atol=0)
        ours, theirs, other = (r.model.net.state_dict() for r in (runs[i], single_run, singles[1 - i][0]))
        for name in theirs:
            if "running" in name:
                error = (ours[name] - theirs[name]).abs().max()
                assert error <= 1e-3 * theirs[name].abs().max(), name
                assert error <= 0.01 * (other[name] - theirs[name]).abs().max(), name  # not the other seed's
                checked += 1
            elif "num_batches_tracked" in name:
                assert int(ours[name]) == int(theirs[name])  # one per forward pass in training mode
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in runs[0].model.net.modules())
    assert norms == 20 and checked == 2 * 2 * norms  # each seed's running mean and variance of every norm


def test_stacked_buffer_draws_what_each_seeds_own_buffer_draws():
    gens = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    own = [ReservoirBuffer(5, "cpu", torch.Generator().manual_seed(seed)) for seed in SEEDS]
    stacked = StackedBuffer([ReservoirBuffer(5, "cpu", gen) for gen in gens])
    for step in range(6):
        x = torch.randint(0, 255, (4, len(SEEDS), 2), generator=torch.Generator().manual_seed(step))
        stacked.add(examples=x, labels=x[..., 0].long())
        for s, buffer in enumerate(own):
            buffer.add(examples=x[:, s], labels=x[:, s, 0].long())
        ours = stacked.sample(3, "examples", "labels")
        for s, buffer in enumerate(own):
            for mine, theirs in zip(ours, buffer.sample(3, "examples", "labels")):
                assert torch.equal(mine[:, s], theirs)
    stacked.unstack()
    for s, buffer in enumerate(own):
        assert torch.equal(stacked.buffers[s].fields["examples"][:5], buffer.fields["examples"][:5])
        assert stacked.buffers[s].num_seen == buffer.num_seen == 24


def test_checkpoints_are_each_seeds_single_run_checkpoint(tmp_path):
    """With --checkpoint_dir each seed keeps a single run's checkpoint in its own directory: a stacked run
    interrupted in task 3 and resumed ends with the uninterrupted run's results, and a single run resumes
    a seed's checkpoint as its own."""
    flags = ["--model", "derpp", "--buffer_size", "200", "--load_best_args", "--masked_softmax", "1",
             "--classifier", "fno", "--n_epochs", "1"]
    quiet = dict(log=lambda line: None, progress=ProgressBar(enabled=False))
    reference = run_stacked(digits_args(*flags), SEEDS[:2], **quiet)

    def stop(task, step, losses):
        if task == 2 and step == 5:
            raise KeyboardInterrupt

    directory = str(tmp_path / "ck-{seed}")
    with pytest.raises(KeyboardInterrupt):
        run_stacked(digits_args(*flags, "--checkpoint_dir", directory), SEEDS[:2], step_hook=stop, **quiet)
    resumed = run_stacked(digits_args(*flags, "--checkpoint_dir", directory, "--resume"), SEEDS[:2], **quiet)
    for ours, theirs in zip(resumed, reference):
        for key in set(theirs) - set(TIMING) - {"args"}:
            assert ours[key] == theirs[key], key
    single = run_experiment(digits_args(*flags, "--seed", "2", "--checkpoint_dir", str(tmp_path / "ck-2"),
                                        "--resume"), **quiet)
    assert single["acc_matrix_class_il"] == reference[1]["acc_matrix_class_il"]


@pytest.mark.parametrize("flags, refusal", [
    (["--model", "joint", "--lr", "0.1"], "--seeds: method joint does not support stacked runs yet; run one "
                                          "process per seed"),
    (["--model", "sgd", "--lr", "0.1", "--backbone", "resnet32"], "--seeds: backbone resnet32 does not support"),
    (["--model", "sgd", "--lr", "0.1", "--results_file", "r.json"], "put {seed} in its name"),
])
def test_what_does_not_stack_is_refused_in_one_line(flags, refusal):
    with pytest.raises(UserError) as info:
        run_stacked(digits_args(*flags), SEEDS)
    assert refusal in str(info.value) and "\n" not in str(info.value)


def test_seed_lists_parse():
    assert parse_seeds("1-10") == list(range(1, 11))
    assert parse_seeds("1,4,7") == [1, 4, 7]
    assert parse_seeds("0-2, 9") == [0, 1, 2, 9]
    for bad in ("3-1", "1,1", "x", "1-3,2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_each_seed_writes_its_single_runs_results_file(tmp_path):
    """main.py --seeds (run_entry with run_seeds): every seed's file under a results folder has the name the single
    run with --seed S gives it (results_template), and holds that seed's results."""
    import json
    import os

    from utils.flags import results_name
    from utils.entry import run_entry
    from utils.seeds import results_template
    from utils.stacked.trainer import run_seeds
    explicit = {"dataset": "seq-digits", "model": "sgd", "lr": 0.1, "n_epochs": 1, "device": "cpu"}
    template = results_template(str(tmp_path), explicit, [1, 2])
    assert template.replace("{seed}", "2") == os.path.join(str(tmp_path), results_name({**explicit, "seed": 2}) + ".json")
    args = digits_args("--model", "sgd", "--lr", "0.1", "--n_epochs", "1", "--results_file", template)
    args.seeds = [1, 2]
    assert run_entry("main.py", args, run_seeds, lambda one, results: f"Class-IL {results['class_il']:.2f}") == 0
    for seed in (1, 2):
        with open(template.replace("{seed}", str(seed))) as f:
            written = json.load(f)
        assert written["args"]["seed"] == seed and written["args"]["seeds"] is None


def test_stacked_seeds_share_one_copy_of_the_training_data():
    """The data a stacked run holds does not grow with its seeds: every seed's training split, and every task's
    data a method sees (``TaskData``, which gathers from the split when read), is one storage on the device."""
    args = digits_args("--model", "er", "--buffer_size", "50", "--lr", "0.1")
    dataset = shared_dataset(args)

    def data_storages(n_seeds):
        runs = [build_run(seed_args(args, seed), dataset) for seed in range(1, n_seeds + 1)]
        plans = [stages(run) for run in runs]
        tensors = [run.train.x for run in runs] + [run.train.y for run in runs] + \
            [t for plan in plans for data in plan for t in (data.source_x, data.source_y)]
        return {t.untyped_storage().data_ptr() for t in tensors}

    one, four = data_storages(1), data_storages(4)
    assert len(one) == 2 and four == one  # inputs and labels, whatever the number of seeds
    run = build_run(seed_args(args, 1), dataset)
    data = stages(run)[1]
    assert torch.equal(data.x, run.train.x[data.indices]) and torch.equal(data.y, run.train.y[data.indices])
    rows = torch.tensor([3, 0, 7])
    assert all(torch.equal(a, b) for a, b in zip(data.take(rows), (data.x[rows], data.y[rows])))
