"""The stream settings (docs/online.md): online one-pass training, iteration budgets, blurry-M streams,
task-free runs, label noise, the boundary-free masked softmax and the average anytime accuracy, each checked
against its definition on tiny data (CIFAR-10 python pickles written here, or the embedded digits)."""
import json
import math

import numpy as np
import pytest
import torch

import main
from datasets.utils.cifar_io import write_cifar
from datasets.utils.streams import CIFAR10_ASYMMETRIC, blurry_tasks, noisy_labels
from models import get_model_class, model_names
from models.continual_model import ContinualModel
from utils.metrics import average_anytime
from utils.progress import ProgressBar
from utils.stream_protocol import noise_pairs
from utils.training import build_run, run_experiment, stages, train_stage

PER_CLASS = 30  # tiny CIFAR-10: 30 training images per class, 60 per task


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(10), PER_CLASS)
    x = rng.randint(0, 256, (len(y), 3, 32, 32)).astype(np.uint8)
    y_test = np.repeat(np.arange(10), 3)
    x_test = rng.randint(0, 256, (len(y_test), 3, 32, 32)).astype(np.uint8)
    write_cifar(str(root), "cifar10", (x, y), (x_test, y_test))
    return str(root)


def cifar_args(make_args, cifar_dir, *extra):
    return make_args("--dataset", "seq-cifar10", "--model", "er", "--buffer_size", "20", "--lr", "0.1",
                     "--backbone", "resnet18-reduced", "--data_path", cifar_dir, "--results_file", "none", *extra)


def recording_observe(run, used: list):
    """Replace the method's step by one that records the training-split index of every sample it is given."""
    index = {bytes(row.cpu().numpy().tobytes()): i for i, row in enumerate(run.train.x)}

    def observe(inputs, labels, not_aug_inputs):
        used.extend(index[bytes(row.cpu().numpy().tobytes())] for row in not_aug_inputs)
        return torch.zeros(())
    run.model.observe = observe


# ----------------------------------------------------------------------------- online and budgets

def test_online_sets_one_pass_batches_of_ten_and_the_online_rows_of_best_args(make_args, cifar_dir):
    args = make_args("--dataset", "seq-cifar10", "--model", "er_ace", "--online", "1", "--buffer_size", "200",
                     "--load_best_args")
    assert (args.n_epochs, args.batch_size, args.minibatch_size, args.lr) == (1, 10, 10, 0.1)
    args = make_args("--dataset", "seq-cifar10", "--model", "er", "--online", "1", "--buffer_size", "200",
                     "--load_best_args", "--batch_size", "20", "--lr", "0.05")
    assert (args.batch_size, args.minibatch_size, args.lr) == (20, 10, 0.05)  # the command line wins
    offline = make_args("--dataset", "seq-cifar10", "--model", "er", "--buffer_size", "200", "--load_best_args")
    assert (offline.n_epochs, offline.batch_size, offline.lr) == (50, 32, 0.1)  # the paper's rows, untouched


@pytest.mark.parametrize("flags,message", [
    (["--online", "1", "--n_epochs", "3"], "drop --n_epochs 3"),
    (["--online", "1", "--fitting_mode", "iters", "--n_iters", "5"], "give one or the other"),
    (["--fitting_mode", "iters"], "needs --n_iters"),
    (["--n_iters", "5"], "needs --fitting_mode iters"),
    (["--noise_type", "asym"], "needs --noise_rate"),
    (["--noise_rate", "1"], "below 1"),
    (["--task_free", "1", "--masked_softmax", "1"], "use --masked_softmax batch, seen or 0"),
    (["--seeds", "1-2", "--blurry", "10"], "--seeds does not support --blurry"),
    (["--seeds", "1-2", "--masked_softmax", "seen"], "--seeds does not support --masked_softmax seen"),
    (["--masked_softmax", "half"], "expected one of 0, 1, batch, seen, got 'half'"),
])
def test_meaningless_combinations_are_refused_in_one_line(make_args, capsys, flags, message):
    with pytest.raises(SystemExit):
        make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", *flags)
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_asymmetric_noise_is_refused_where_no_pairs_are_defined(make_args, capsys):
    with pytest.raises(SystemExit):
        make_args("--dataset", "seq-cifar100", "--model", "sgd", "--lr", "0.1", "--noise_rate", "0.2",
                  "--noise_type", "asym")
    assert "seq-cifar100 defines no class pairs" in capsys.readouterr().err


def test_one_online_pass_uses_every_stream_sample_exactly_once(make_args, cifar_dir):
    run = build_run(cifar_args(make_args, cifar_dir, "--online", "1", "--batch_size", "7"))
    used = []
    recording_observe(run, used)
    steps = [train_stage(run, data)[1] for data in stages(run)]
    assert sorted(used) == list(range(len(run.train.y)))       # each of the 300 samples once, none twice
    assert steps == [9] * 5                                     # 60 = 8 * 7 + 4: eight batches of 7, one of 4


def test_iteration_budget_takes_n_iters_steps_and_repeats_passes(make_args, cifar_dir):
    run = build_run(cifar_args(make_args, cifar_dir, "--fitting_mode", "iters", "--n_iters", "14",
                               "--batch_size", "10"))
    used = []
    recording_observe(run, used)
    _, steps = train_stage(run, stages(run)[0])
    assert steps == 14 and len(used) == 140                      # 2 full passes of 6 steps, then 2 steps of a third
    counts = np.bincount(used, minlength=60)[:60]
    assert sorted(set(counts.tolist())) == [2, 3] and (counts == 3).sum() == 20


# ----------------------------------------------------------------------------- blurry streams

def test_blurry_moves_the_stated_share_to_the_other_tasks_in_equal_parts():
    own = torch.arange(5).repeat_interleave(60)                 # 5 tasks of 60 samples
    stream = blurry_tasks(own, 5, 10, torch.Generator().manual_seed(0))
    for t in range(5):
        here = stream == t
        assert int(here.sum()) == 60                            # sizes kept
        foreign = own[here & (own != t)]
        assert len(foreign) == 6                                # 10 % of 60, exactly
        # 6 samples of each task go out, 6 // 4 = 1 to every other task and the 2 left over to the next two
        assert sorted(torch.bincount(foreign, minlength=5).tolist()) == [0, 1, 1, 2, 2]
    assert (stream != own).sum() == 30


def test_blurry_run_records_its_share_and_keeps_labels(make_args, cifar_dir):
    clean = build_run(cifar_args(make_args, cifar_dir))
    run = build_run(cifar_args(make_args, cifar_dir, "--blurry", "10"))
    assert run.stream["blurry_share"] == [10.0] * 5
    assert torch.equal(run.train.y, clean.train.y)
    own = run.train.y // 2
    for t, data in enumerate(stages(run)):
        assert len(data) == 60 and int((own[data.indices] != t).sum()) == 6


# ----------------------------------------------------------------------------- task-free

def test_task_free_calls_no_boundary_hook_and_builds_one_optimizer(make_args, monkeypatch, tmp_path):
    calls = []
    model_cls = get_model_class("er")
    for hook in ("begin_task", "end_task", "prepare_task"):
        original = getattr(model_cls, hook)
        monkeypatch.setattr(model_cls, hook, lambda self, *a, _h=hook, _o=original: calls.append(_h) or _o(self, *a))
    args = make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1",
                     "--task_free", "1", "--masked_softmax", "seen", "--debug_mode", "1", "--results_file", "none")
    results = run_experiment(args, log=lambda *a: None)
    assert calls == ["prepare_task"]                            # once, before the stream; never a boundary
    assert results["task_il"] is None and results["acc_matrix_task_il"] is None
    assert len(results["acc_matrix_class_il"]) == 5             # still evaluated where each task ends
    calls.clear()
    run_experiment(make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1",
                             "--debug_mode", "1", "--results_file", "none"), log=lambda *a: None)
    assert calls == ["prepare_task", "begin_task", "end_task"] * 5


def test_methods_that_use_boundaries_declare_it_and_are_refused(make_args, capsys):
    for name in model_names():
        cls = get_model_class(name)
        hooks = any(getattr(cls, h) is not getattr(ContinualModel, h) for h in ("begin_task", "end_task"))
        if hooks or cls.JOINT:
            assert cls.NEEDS_BOUNDARIES, f"{name} uses task boundaries but does not say so"
    with pytest.raises(SystemExit):
        make_args("--dataset", "seq-digits", "--model", "ewc_on", "--lr", "0.1", "--e_lambda", "1", "--gamma", "1",
                  "--task_free", "1")
    err = capsys.readouterr().err.strip()
    assert "--model ewc_on needs task boundaries" in err and "\n" not in err


# ----------------------------------------------------------------------------- masked softmax without boundaries

LOGITS = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 1.0, 3.0, 2.0]])


def hand_ce(logits, labels, kept):
    """Cross-entropy over the kept classes, written out: -z_y + log sum_{k kept} exp(z_k), averaged."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        total += -row[y] + math.log(sum(math.exp(row[k]) for k in kept))
    return total / len(labels)


def mask_model(make_args, mode):
    args = make_args("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--masked_softmax", mode)
    return build_run(args).model


def test_batch_mask_keeps_the_classes_present_in_the_batch(make_args):
    model = mask_model(make_args, "batch")
    logits, labels = torch.cat([LOGITS, torch.zeros(2, 6)], 1), torch.tensor([0, 2])   # 10 classes
    loss = model.stream_loss(logits, labels)
    assert math.isclose(float(loss), hand_ce(logits, labels, [0, 2]), rel_tol=1e-6)


def test_seen_mask_keeps_the_classes_the_stream_has_shown(make_args):
    model = mask_model(make_args, "seen")
    logits = torch.cat([LOGITS, torch.zeros(2, 6)], 1)
    model.stream_loss(logits, torch.tensor([3, 3]))              # class 3 seen first
    loss = model.stream_loss(logits, torch.tensor([1, 1]))
    assert math.isclose(float(loss), hand_ce(logits, torch.tensor([1, 1]), [1, 3]), rel_tol=1e-6)
    assert model.state_dict()["stream_seen"].nonzero().flatten().tolist() == [1, 3]   # kept by checkpoints


# ----------------------------------------------------------------------------- label noise

def test_noise_changes_the_stated_share_of_each_class_and_asym_follows_the_pairs():
    labels = torch.arange(10).repeat_interleave(30)
    noisy, rate = noisy_labels(labels, 10, 0.2, None, torch.Generator().manual_seed(1))
    assert rate == pytest.approx(0.2)
    for c in range(10):
        assert int((noisy[labels == c] != c).sum()) == 6        # round(0.2 * 30) in every class
    noisy, rate = noisy_labels(labels, 10, 0.2, CIFAR10_ASYMMETRIC, torch.Generator().manual_seed(1))
    assert rate == pytest.approx(0.1)                           # 5 of 10 classes have a pair
    changed = noisy != labels
    assert set(zip(labels[changed].tolist(), noisy[changed].tolist())) == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    assert all(int(changed[labels == c].sum()) == (6 if c in CIFAR10_ASYMMETRIC else 0) for c in range(10))


def test_noisy_labels_are_the_same_for_both_heads_with_one_seed_and_tests_stay_clean(make_args, cifar_dir):
    flags = ("--noise_rate", "0.2", "--noise_type", "asym")
    fc = build_run(cifar_args(make_args, cifar_dir, *flags))
    fno = build_run(cifar_args(make_args, cifar_dir, *flags, "--classifier", "fno"))
    other = build_run(cifar_args(make_args, cifar_dir, *flags, "--seed", "1"))
    clean = build_run(cifar_args(make_args, cifar_dir))
    assert torch.equal(fc.train.y, fno.train.y) and not torch.equal(fc.train.y, other.train.y)
    assert not torch.equal(fc.train.y, clean.train.y) and torch.equal(fc.test.y, clean.test.y)
    assert fc.stream["realised_noise_rate"] == pytest.approx(0.1)
    assert torch.equal(fc.train.task, fc.train.y // 2)           # a sample's stream task follows its given label


# ----------------------------------------------------------------------------- average anytime accuracy

def test_average_anytime_accuracy_is_the_mean_over_every_anytime_evaluation():
    anytime = [{"class_il": 80.0, "task_il": 80.0}, {"class_il": 50.0, "task_il": 90.0},
               {"class_il": 41.0, "task_il": 70.0}]
    assert average_anytime(anytime) == pytest.approx((80 + 50 + 41) / 3)
    assert average_anytime(anytime, "task_il") == pytest.approx(80.0)
    assert average_anytime([]) is None
    assert average_anytime([{"class_il": 10.0, "task_il": None}], "task_il") is None


def test_results_hold_aauc_of_the_anytime_evaluations(make_args):
    args = make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1",
                     "--online", "1", "--eval_every", "2", "--max_steps_per_task", "4", "--results_file", "none")
    results = run_experiment(args, log=lambda *a: None)
    points = results["anytime"]
    assert [(p["task"], p["step"]) for p in points] == [(t, s) for t in range(1, 6) for s in (2, 4)]
    by_hand = sum(sum(p["class_il_per_task"]) / len(p["class_il_per_task"]) for p in points) / len(points)
    assert results["aauc_class_il"] == pytest.approx(by_hand)
    assert results["class_il"] == pytest.approx(sum(results["acc_matrix_class_il"][-1]) / 5)


# ----------------------------------------------------------------------------- the commands

@pytest.mark.parametrize("extra", [[], ["--blurry", "10"], ["--task_free", "1"],
                                   ["--noise_rate", "0.2", "--noise_type", "asym"]])
def test_online_er_ace_commands_run_on_cifar_files(cifar_dir, tmp_path, extra):
    out = tmp_path / "r.json"
    code = main.main(["--dataset", "seq-cifar10", "--model", "er_ace", "--online", "1", "--backbone",
                      "resnet18-reduced", "--buffer_size", "200", "--load_best_args", "--debug_mode", "1",
                      "--data_path", cifar_dir, "--device", "cpu", "--results_file", str(out),
                      "--max_steps_per_task", "2", *extra])  # 2 steps instead of --debug_mode's 5: the tests' time
    assert code == 0
    results = json.loads(out.read_text())
    assert results["args"]["lr"] == 0.1 and results["n_steps"] == 10
    assert (results["task_il"] is None) == ("--task_free" in extra)
    assert (results["blurry_share"] is not None) == ("--blurry" in extra)
    assert (results["realised_noise_rate"] is not None) == ("--noise_rate" in extra)


# ----------------------------------------------------------------------------- checkpoints

def test_a_stream_run_interrupted_and_resumed_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """Task-free (one optimizer across tasks, the seen-classes mask), blurry and noisy: every piece of state
    either comes back from the checkpoint or is drawn again from the seed."""
    flags = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--online", "1",
             "--task_free", "1", "--masked_softmax", "seen", "--blurry", "10", "--noise_rate", "0.2",
             "--max_steps_per_task", "6", "--eval_every", "3", "--device", "cpu", "--nowand", "1"]

    def results(path):
        out = json.loads(path.read_text())
        for key in ("wall_time_s", "train_time_s", "start_time"):
            out.pop(key)
        for key in ("results_file", "checkpoint_dir", "resume"):
            out["args"].pop(key)
        return out
    assert main.main(flags + ["--results_file", str(tmp_path / "ref.json")]) == 0
    ckpt = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--results_file", str(tmp_path / "r.json")]
    update = ProgressBar.update

    def interrupt(self, label, step, total, loss):
        if label.startswith("Task 3/") and step == 2:
            raise KeyboardInterrupt
        update(self, label, step, total, loss)
    monkeypatch.setattr(ProgressBar, "update", interrupt)
    assert main.main(flags + ckpt) == 130
    monkeypatch.setattr(ProgressBar, "update", update)
    assert main.main(flags + ckpt + ["--resume"]) == 0
    assert results(tmp_path / "r.json") == results(tmp_path / "ref.json")


@pytest.mark.parametrize("model,extra", [("sgd", []), ("der", ["--buffer_size", "50", "--alpha", "0.3"]),
                                         ("derpp", ["--buffer_size", "50", "--alpha", "0.3", "--beta", "0.5"])])
def test_boundary_free_methods_run_task_free_blurry_and_noisy(make_args, model, extra):
    args = make_args("--dataset", "seq-digits", "--model", model, "--lr", "0.1", *extra, "--online", "1",
                     "--task_free", "1", "--masked_softmax", "batch", "--blurry", "20", "--noise_rate", "0.1",
                     "--classifier", "fno", "--debug_mode", "1", "--results_file", "none")
    results = run_experiment(args, log=lambda *a: None)
    assert results["task_il"] is None and math.isfinite(results["class_il"])
    assert results["realised_noise_rate"] == pytest.approx(0.1, abs=0.01) and len(results["blurry_share"]) == 5


def test_asymmetric_pairs_follow_a_class_order(make_args, cifar_dir):
    run = build_run(cifar_args(make_args, cifar_dir, "--class_order", "3"))
    order = run.class_order                                      # label l is original class order[l]
    pairs = noise_pairs(run.dataset, torch.tensor(order))
    assert {(order[a], order[b]) for a, b in pairs.items()} == set(CIFAR10_ASYMMETRIC.items())
