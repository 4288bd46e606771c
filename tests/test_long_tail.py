"""Long-tailed learning: the LT profile, arc-mixup, mixup, the ETF head, metrics and every arm end to end."""
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import main_lt
from backbone.heads import fno_matrix, simplex_etf
from datasets.utils.cifar_io import write_cifar
from longtail.data import long_tail_counts, long_tail_subset, shot_groups
from longtail.losses import (ARC_LOSS_EPS, arc_coefficients, arc_mixup_batch, arc_mixup_loss,
                             balanced_pairs, mixup_batch)
from longtail.metrics import long_tail_metrics
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PER_CLASS = 120  # ratio 100 on 10 classes: 120, 71, 42, 25, 15, 8, 5, 2, 1, 1 -> many, medium and few all occur
TINY = ["--width", "4", "--batch_size", "32", "--n_epochs", "1", "--device", "cpu", "--seed", "3"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- the LT profile

def test_cifar10_lt_counts_are_the_standard_profile():
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(long_tail_counts(500, 100, 100)) == 10847  # CIFAR-100-LT, ratio 100, as in the literature
    assert long_tail_counts(5000, 10, 1) == [5000] * 10


@pytest.mark.parametrize("rho", [10, 50, 100])
def test_counts_follow_the_exponential_formula(rho):
    k, n_max = 100, 500
    counts = long_tail_counts(n_max, k, rho)
    expected = np.floor(n_max * (1.0 / rho) ** (np.arange(k) / (k - 1)) + 1e-9).astype(int)
    assert counts == expected.tolist()
    assert counts[0] == n_max and counts[-1] == n_max // rho
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_ratio_below_one_is_refused():
    with pytest.raises(UserError, match="imbalance_ratio"):
        long_tail_counts(100, 10, 0.5)


def test_subset_keeps_exact_counts_from_a_fixed_seed():
    labels = np.repeat(np.arange(5), 50)
    counts = long_tail_counts(50, 5, 10)
    keep = long_tail_subset(labels, counts, seed=0)
    assert np.bincount(labels[keep], minlength=5).tolist() == counts
    assert len(np.unique(keep)) == len(keep)
    assert np.array_equal(keep, long_tail_subset(labels, counts, seed=0))
    assert not np.array_equal(keep, long_tail_subset(labels, counts, seed=1))


def test_shot_groups_boundaries():
    groups = shot_groups([101, 100, 20, 19, 0])
    assert groups == {"many": [0], "medium": [1, 2], "few": [3, 4]}


def test_metrics_per_group_are_class_means():
    hits = torch.tensor([10.0, 5.0, 2.0, 0.0])
    counts = torch.tensor([10.0, 10.0, 4.0, 0.0])
    m = long_tail_metrics(hits, counts, shot_groups([500, 50, 5, 3]))
    assert m["accuracy"] == pytest.approx(100 * 17 / 24)
    assert m["many_acc"] == 100 and m["medium_acc"] == 50 and m["few_acc"] == 50  # class 3 has no test images
    assert m["per_class_acc"] == [100.0, 50.0, 50.0, None]
    assert long_tail_metrics(hits[:2], counts[:2], shot_groups([500, 400]))["few_acc"] is None


# ----------------------------------------------------------------------------- arc-mixup

def test_every_partner_is_from_another_class():
    g = gen(1)
    for _ in range(200):
        labels = torch.randint(0, 6, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g)
        if len(labels.unique()) < 2:
            continue
        i, j, present = balanced_pairs(labels, 6, g)
        assert (labels[i] != labels[j]).all()
        assert present.tolist() == [bool((labels == c).any()) for c in range(6)]


def test_pairs_are_class_balanced_not_frequency_weighted():
    # A long-tailed batch: 60, 30, 8 and 2 samples of classes 0..3 (class 4 absent).
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor([60, 30, 8, 2]))
    g = gen(2)
    first, pair_counts, member_counts = torch.zeros(5), torch.zeros(5, 5), torch.zeros(len(labels))
    for _ in range(1000):
        i, j, _ = balanced_pairs(labels, 5, g)
        first += torch.bincount(labels[i], minlength=5)
        pair_counts += torch.bincount(labels[i] * 5 + labels[j], minlength=25).view(5, 5)
        member_counts += torch.bincount(j, minlength=len(labels))
    n = 1000 * len(labels)
    # i's class is uniform over the 4 present classes (frequency weighting would give 0.6, 0.3, 0.08, 0.02);
    # each frequency has a standard deviation below 0.002, the tolerance is 0.02.
    assert (first[:4] / n - 0.25).abs().max() < 0.02 and first[4] == 0
    # given i's class, j's class is uniform over the 3 other present classes
    conditional = pair_counts[:4, :4] / pair_counts[:4, :4].sum(1, keepdim=True)
    off_diagonal = conditional[~torch.eye(4, dtype=torch.bool)]
    assert (off_diagonal - 1 / 3).abs().max() < 0.03 and conditional.diagonal().sum() == 0
    # within a class, every member is equally likely: class 1's 30 members
    members = member_counts[60:90] / member_counts[60:90].sum()
    assert (members - 1 / 30).abs().max() < 0.01


def make_fno_batch(seed=0, n=24, k=5, d=13):
    g = gen(seed)
    q = fno_matrix(k, d, g)
    labels = torch.tensor([0, 0, 0, 1, 1, 3] * (n // 6))  # classes 2 and 4 absent
    x = torch.randn(n, 3, 4, 4, generator=g)
    return q, labels, x


def test_arc_mixup_batch_follows_its_definition():
    q, labels, x = make_fno_batch()
    lam = 0.3
    a, b = arc_coefficients(lam)
    assert a == pytest.approx(math.sin(math.pi * lam / 2)) and b == pytest.approx(math.cos(math.pi * lam / 2))
    i, j, _ = balanced_pairs(labels, 5, gen(7))
    mixed = arc_mixup_batch(x, labels, q, lam, gen(7))  # same stream: the same pairs
    torch.testing.assert_close(mixed.x, a * x[i] + b * x[j])
    torch.testing.assert_close(mixed.q, a * q[labels[i]] + b * q[labels[j]])
    torch.testing.assert_close(mixed.q.norm(dim=1), torch.ones(len(labels)))  # unit norm: Q's rows are orthonormal
    own_dims = (q[[0, 1, 3]] > 0).any(0)
    assert mixed.feature_mask.tolist() == own_dims.float().tolist()


def test_single_class_batch_is_not_mixed():
    q, _, x = make_fno_batch()
    labels = torch.full((len(x),), 2)
    mixed = arc_mixup_batch(x, labels, q, 0.4, gen(3))
    i, _, _ = balanced_pairs(labels, 5, gen(3))
    torch.testing.assert_close(mixed.x, x[i])
    torch.testing.assert_close(mixed.q, q[labels])


def test_arc_mixup_loss_on_hand_made_tensors():
    s = 1 / math.sqrt(2)
    q_hat = torch.tensor([[0.6 * s, 0.6 * s, 0.8 * s, 0.8 * s, 0.0]])  # a = 0.6, b = 0.8 on classes 0 and 1
    h = torch.tensor([[3.0, 1.0, 0.0, 2.0, 7.0]])                     # dimension 4 belongs to an absent class
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    h_hat = torch.tensor([3.0, 1.0, 0.0, 2.0, 0.0]) / math.sqrt(14)
    expected = -math.log(float(q_hat[0] @ h_hat))
    assert float(arc_mixup_loss(h, q_hat, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(arc_mixup_loss(h, q_hat, mask)) == pytest.approx(-math.log(s * (0.6 * 4 + 0.8 * 2) / math.sqrt(14)))
    # no mass on the pair's dimensions: finite, -log(eps)
    assert float(arc_mixup_loss(torch.tensor([[0.0, 0, 0, 0, 1]]), q_hat, torch.ones(5))) == pytest.approx(
        -math.log(ARC_LOSS_EPS))


def test_mixup_batch_is_a_convex_combination_with_a_random_partner():
    x = torch.randn(16, 3)
    labels = torch.arange(16) % 4
    x_mix, partner = mixup_batch(x, labels, 0.7, gen(5))
    perm = torch.randperm(16, generator=gen(5))
    torch.testing.assert_close(x_mix, 0.7 * x + 0.3 * x[perm])
    assert torch.equal(partner, labels[perm])


# ----------------------------------------------------------------------------- ETF + dot regression

@pytest.mark.parametrize("k,d", [(10, 64), (100, 128), (2, 2)])
def test_simplex_etf_geometry(k, d):
    m = simplex_etf(k, d, gen(0)).double()
    assert m.shape == (k, d)
    torch.testing.assert_close(m.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6, rtol=0)
    cos = m @ m.T
    off = cos[~torch.eye(k, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1 / (k - 1)), atol=1e-6, rtol=0)


def test_etf_needs_enough_dimensions():
    with pytest.raises(UserError, match="feature_dim=8 < num_classes=10"):
        simplex_etf(10, 8, gen(0))


# ----------------------------------------------------------------------------- end to end

def write_tiny_cifar(root, n_train: int, n_test: int) -> str:
    """CIFAR-10 in torchvision's layout, ``n_train`` / ``n_test`` images per class: noise whose brightness
    grows with the class, so that a tiny network learns something in an epoch."""
    rng = np.random.RandomState(0)

    def split(n_per_class):
        y = np.repeat(np.arange(10), n_per_class)
        x = (rng.randint(0, 128, (len(y), 3, 32, 32)) + (y * 12)[:, None, None, None]).astype(np.uint8)
        return x, y

    write_cifar(str(root), "cifar10", split(n_train), split(n_test))
    return str(root)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), N_PER_CLASS, 6)


def run_main(argv, capsys):
    code = main_lt.main(argv)
    return code, capsys.readouterr()


@pytest.mark.parametrize("method", ["ce", "mixup", "etf-dr", "etf-dr-plain", "arc-mixup"])
def test_each_arm_runs_end_to_end(method, cifar_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _ = run_main(["--dataset", "cifar10-lt", "--imbalance_ratio", "100", "--method", method,
                        "--data_path", cifar_dir, "--results_file", str(out)] + TINY, capsys)
    assert code == 0
    r = json.loads(out.read_text())
    assert r["setting"] == "long-tail" and r["args"]["method"] == method
    assert r["class_counts"] == long_tail_counts(N_PER_CLASS, 10, 100)
    for key in ("accuracy", "many_acc", "medium_acc", "few_acc"):
        assert 0 <= r[key] <= 100
    per_class = r["per_class_acc"]
    assert len(per_class) == 10 and r["accuracy"] == pytest.approx(sum(per_class) / 10)  # balanced test set
    # the paper's groups on CIFAR-10-LT: class ranks [0, 3), [3, 7), [7, 10)
    assert r["many_acc"] == pytest.approx(sum(per_class[:3]) / 3)
    assert r["medium_acc"] == pytest.approx(sum(per_class[3:7]) / 4)
    assert math.isfinite(r["final_train_loss"]) and r["world_size"] == 1


def test_fno_refuses_too_few_dimensions(tmp_path, capsys):
    code, io = run_main(["--dataset", "cifar100-lt", "--method", "arc-mixup", "--width", "16",
                         "--data_path", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 2 and io.err.count("\n") == 1 and "feature_dim=64 < num_classes=100" in io.err


@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "cifar10-lt", "--method", "softmax"], "invalid choice: 'softmax'"),
    (["--dataset", "cifar10-lt"], "--method is required"),
    (["--dataset", "imagenet-lt", "--method", "ce", "--imbalance_ratio", "10"], "does not apply to imagenet-lt"),
    (["--dataset", "cifar10-lt", "--method", "ce", "--imbalance_ratio", "0.5"], "must be >= 1"),
    (["--dataset", "cifar10-lt", "--method", "ce", "--backbone", "resnet50", "--width", "8"], "applies to resnet32"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    try:
        code, io = run_main(argv + ["--data_path", str(tmp_path), "--device", "cpu"], capsys)
    except SystemExit as exc:
        code, io = exc.code, capsys.readouterr()
    assert code == 2 and needle in io.err and io.err.count("\n") == 1


# ----------------------------------------------------------------------------- ImageNet-LT style split lists

def write_image_tree(root, train_counts, test_per_class=1, size=24):
    from PIL import Image
    rng = np.random.RandomState(0)
    lines = {"train": [], "test": []}
    for split, counts in (("train", train_counts), ("test", [test_per_class] * len(train_counts))):
        for c, n in enumerate(counts):
            os.makedirs(root / split / f"n{c:03d}", exist_ok=True)
            for k in range(n):
                rel = f"{split}/n{c:03d}/img {k}.JPEG"  # a space in the path is allowed
                pixels = np.clip(rng.randint(0, 100, (size, size + 4, 3)) + 60 * c, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / rel, format="JPEG")
                lines[split].append(f"{rel} {c}")
    for split, entries in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(entries) + "\n")
    return lines


IMAGENET_TINY = ["--dataset", "imagenet-lt", "--method", "ce", "--backbone", "resnet32", "--width", "4",
                 "--image_size", "16", "--batch_size", "4", "--n_epochs", "1", "--workers", "1", "--device", "cpu"]


def test_imagenet_lt_lists_decode_through_workers(tmp_path, capsys):
    write_image_tree(tmp_path, [7, 3, 2])
    out = tmp_path / "r.json"
    code, io = run_main(IMAGENET_TINY + ["--data_path", str(tmp_path), "--results_file", str(out),
                                         "--shot_groups", "counts"], capsys)
    assert code == 0, io.err
    r = json.loads(out.read_text())
    assert r["class_counts"][:3] == [7, 3, 2] and sum(r["class_counts"]) == 12 and len(r["class_counts"]) == 1000
    assert r["per_class_acc"][3:] == [None] * 997 and r["per_class_acc"][0] in (0.0, 100.0)
    assert r["many_acc"] is None and r["medium_acc"] is None and 0 <= r["few_acc"] <= 100


@pytest.mark.parametrize("bad_line,needle", [
    ("justonefield", "line 3: expected 'relative/path label'"),
    ("train/n000/img 0.JPEG seven", "line 3: label 'seven' is not an integer"),
    ("train/n000/img 0.JPEG 1000", "line 3: label 1000 is outside 0..999"),
    ("train/n000/missing.JPEG 0", "line 3: image"),
])
def test_malformed_list_names_file_and_line(bad_line, needle, tmp_path, capsys):
    lines = write_image_tree(tmp_path, [2, 1])
    (tmp_path / "ImageNet_LT_train.txt").write_text("\n".join(lines["train"][:2] + [bad_line]) + "\n")
    code, io = run_main(IMAGENET_TINY + ["--data_path", str(tmp_path)], capsys)
    assert code == 2 and "ImageNet_LT_train.txt" in io.err and needle in io.err and io.err.count("\n") == 1


def test_missing_list_and_corrupt_image_are_one_line_errors(tmp_path, capsys):
    code, io = run_main(IMAGENET_TINY + ["--data_path", str(tmp_path)], capsys)
    assert code == 2 and "ImageNet_LT_train.txt is missing" in io.err and io.err.count("\n") == 1
    write_image_tree(tmp_path, [2, 1])
    (tmp_path / "test" / "n001" / "img 0.JPEG").write_bytes(b"not a jpeg")
    code, io = run_main(IMAGENET_TINY + ["--data_path", str(tmp_path)], capsys)
    assert code == 2 and "cannot read image" in io.err and "img 0.JPEG" in io.err and io.err.count("\n") == 1


# ----------------------------------------------------------------------------- DistributedDataParallel

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_with_gloo(cifar_dir, tmp_path):
    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), os.path.join(REPO, "main_lt.py"),
           "--dataset", "cifar10-lt", "--method", "arc-mixup", "--data_path", cifar_dir,
           "--results_file", str(out)] + TINY
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["class_counts"] == long_tail_counts(N_PER_CLASS, 10, 100)
    assert len(r["per_class_acc"]) == 10 and None not in r["per_class_acc"]  # both shards of the test set counted
    assert done.stdout.count("Final (") == 1  # only rank 0 reports


@pytest.mark.parametrize("name", ["lt-cifar10", "lt-cifar100"])
def test_sweep_files_cover_the_grid_and_the_grid_commands_parse(name, tmp_path, monkeypatch):
    """Every run the grid runner plans with --checkpoints (--results_file, --checkpoint_dir, --resume added) parses."""
    from utils.grid.sweep import expand, load_sweep, plan
    path = os.path.join(REPO, "sweeps", f"{name}.yaml")
    sweep = load_sweep(path)
    assert sweep["program"] == "main_lt.py" and sweep["method"] == "grid"
    combos = expand(sweep)
    assert {(c["method"], c["imbalance_ratio"], c["seed"]) for c in combos} == {
        (m, r, s) for m in ("ce", "mixup", "etf-dr", "arc-mixup") for r in (100, 50, 10) for s in (1, 2, 3)}
    monkeypatch.chdir(REPO)
    for run in plan(path, str(tmp_path), checkpoints=True):
        args = main_lt.parse_args(run.argv[run.argv.index("main_lt.py") + 1:])
        assert args.backbone == "resnet32" and args.width == (32 if name == "lt-cifar100" else 16)
        assert (args.results_file, args.checkpoint_dir, args.resume) == (run.results_file, run.checkpoint_dir, True)
