"""The long-tail trainer follows the authors' released protocol (khyong/FNO-classifier, fno_lt).

Each test pins one choice to its definition: the etf-dr arm (mixup + ETF +
dot regression, class-balanced prototype lengths), the clean batch-norm pass
of the mixing arms, final and best-epoch accuracies, the many/medium/few
definitions, the ImageNet-LT / Places-LT presets, fp16, warm-up, the arc-mixup
loss, ResNet-32 initialisation, CIFAR normalisation and ``--pretrained``.
"""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import main_lt
from backbone.heads import simplex_etf
from backbone.resnet_cifar import ResNet32
from backbone.resnet_imagenet import TorchvisionResNet
from backbone.heads import Network
from datasets.utils.continual_dataset import Split
from longtail import trainer
from longtail.arms import LT_METHODS, BatchNormETFHead
from longtail.batches import LongTailData, ResidentBatches, ResidentTestBatches
from longtail.data import (Cifar100LongTail, Cifar10LongTail, describe_shot_groups, get_lt_dataset_class,
                           long_tail_counts, shot_groups)
from longtail.losses import ARC_LOSS_EPS, arc_mixup_loss, class_balancing_scale, dot_regression_loss
from longtail.processes import Processes
from longtail.schedule import lr_factor
from longtail.trainer import build_run, load_pretrained, run_long_tail, train_step
from tests.test_long_tail import write_tiny_cifar
from utils.errors import DataError
from utils.guards import DivergedError
from utils.seeding import make_generator

TINY = ["--width", "4", "--batch_size", "32", "--device", "cpu", "--seed", "3"]


def args_for(*argv):
    return main_lt.parse_args(["--dataset", "cifar10-lt"] + list(argv))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- etf-dr

def test_class_balancing_scale_is_sqrt_of_batch_share_over_count():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])  # B = 6, C = 3 classes present, B / C = 2; class 3 absent
    expected = [math.sqrt(2 / 3), math.sqrt(2 / 1), math.sqrt(2 / 2), 1.0]
    torch.testing.assert_close(class_balancing_scale(labels, 4), torch.tensor(expected))


def test_dot_regression_on_hand_made_tensors():
    z = torch.tensor([[3.0, 4.0], [0.0, 2.0]])            # |z| = 5 and 2
    prototypes = torch.tensor([[2.0, 0.0], [0.0, 0.5]])   # |m| = 2 and 0.5
    labels = torch.tensor([0, 0])
    # sample 0: z.m = 6, |m||z| = 10 -> (6 - 10)^2 / 5 = 3.2; sample 1: z.m = 0, |m||z| = 4 -> 16 / 2 = 8
    assert float(dot_regression_loss(z, prototypes, labels)) == pytest.approx(0.5 * (3.2 + 8) / 2)
    # the authors' norm penalty outside CIFAR: + 0.01 * mean |z|
    assert float(dot_regression_loss(z, prototypes, labels, 0.01)) == pytest.approx(0.5 * 11.2 / 2 + 0.01 * 3.5)


def test_dot_regression_detaches_the_feature_norm():
    z = torch.tensor([[3.0, 4.0]], requires_grad=True)
    m = torch.tensor([[1.0, 1.0]])
    dot_regression_loss(z, m, torch.tensor([0])).backward()
    # with |z| a constant L: d/dz 0.5 (z.m - |m| L)^2 / L = (z.m - |m| L) / L * m
    length, m_len = 5.0, math.sqrt(2)
    expected = (7.0 - m_len * length) / length * m
    torch.testing.assert_close(z.grad, expected)


def test_etf_head_is_batch_norm_then_unscaled_prototypes_without_l2():
    head = BatchNormETFHead(simplex_etf(4, 6, gen(0)))
    h = torch.rand(5, 6) * 10
    head.train()
    z = head.train_features(h)
    torch.testing.assert_close(z, F.batch_norm(h, None, None, head.bn.weight, head.bn.bias, True, 0.0, head.bn.eps))
    torch.testing.assert_close(head(h), z @ head.weight.T)  # train mode: the same z
    assert int(head.bn.num_batches_tracked) == 1             # train_features did not update the running stats
    head.eval()
    torch.testing.assert_close(head(h), head.bn(h) @ head.weight.T)
    assert head(h).abs().max() > 1.5  # no L2 normalisation: not cosines


class Flat(torch.nn.Module):
    """A backbone whose features are its (flattened) input: the loss can be computed by hand."""
    feature_dim = 12

    def forward(self, x):
        return x.flatten(1)


def tiny_method(name, alpha=1.0):
    args = args_for("--method", name, "--mixup_alpha", str(alpha))
    method = LT_METHODS[name](args, Cifar10LongTail, torch.device("cpu"))
    net = Network(Flat(), method.make_head(Flat.feature_dim))
    return method, net


def hand_dot_regression(z, m, labels):
    """0.5 mean_i (z_i . m_i - |m_i| |z_i|)^2 / |z_i|, by explicit loops in float64."""
    total = 0.0
    for zi, y in zip(z.double(), labels.tolist()):
        mi = m[y].double()
        dot, zl, ml = float(zi @ mi), float(zi.norm()), float(mi.norm())
        total += 0.5 * (dot - ml * zl) ** 2 / zl
    return total / len(labels)


@pytest.mark.parametrize("name", ["etf-dr", "etf-dr-plain"])
def test_etf_dr_arm_loss_by_hand(name):
    method, net = tiny_method(name, alpha=0.4)
    x = torch.randn(6, 3, 2, 2, generator=gen(4))
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    rng, g = copy.deepcopy(method.lambda_rng), torch.Generator().manual_seed(0)
    g.set_state(method.generator.get_state())
    loss = float(method.loss(net, net.head, x, y).detach())
    # by hand: mix the inputs, batch-normalise the features, scale the prototypes, regress both labels
    w = net.head.weight
    scale = {0: math.sqrt(2 / 3), 1: math.sqrt(2), 2: 1.0}
    m = torch.stack([w[c] * scale.get(c, 1.0) for c in range(10)])
    if name == "etf-dr":
        lam = float(rng.beta(0.4, 0.4))
        perm = torch.randperm(6, generator=g)
        x_mix = lam * x + (1 - lam) * x[perm]
    else:
        lam, perm, x_mix = 1.0, torch.arange(6), x
    h = x_mix.flatten(1).double()
    z = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)  # BN weight 1, bias 0 at init
    expected = lam * hand_dot_regression(z, m, y) + (1 - lam) * hand_dot_regression(z, m, y[perm])
    assert loss == pytest.approx(expected, rel=1e-4)
    assert 0 < lam < 1 or name == "etf-dr-plain"


# ----------------------------------------------------------------------------- the clean batch-norm pass

def synthetic_data(batch_size=16, device=torch.device("cpu")):
    counts = [40, 20, 10, 5, 3, 2, 2, 1, 1, 1]
    y = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    x = torch.randint(0, 256, (len(y), 3, 32, 32), generator=gen(0), dtype=torch.uint8)
    split, procs, transform = Split(x, y).to(device), Processes(), Cifar10LongTail.TRANSFORM.to(device)
    train = ResidentBatches(split, transform, batch_size, procs,
                            make_generator(0, "data-order", device), make_generator(0, "augmentation", device))
    return LongTailData(train, ResidentTestBatches(split, transform, procs), counts, len(y))


@pytest.mark.parametrize("name,clean_pass", [("ce", False), ("mixup", True), ("etf-dr", False),
                                             ("etf-dr-plain", False), ("arc-mixup", True)])
def test_mixing_arms_add_one_clean_train_mode_forward(name, clean_pass):
    args = args_for("--method", name, *TINY)
    run = build_run(args, Processes(), torch.device("cpu"), synthetic_data())
    seen = []
    run.model.backbone.register_forward_pre_hook(lambda mod, inp: seen.append((inp[0].clone(), mod.training)))
    x, y = next(run.data.train.epoch(0))
    train_step(run, x, y)
    assert len(seen) == (2 if clean_pass else 1) and all(training for _, training in seen)
    if clean_pass:
        torch.testing.assert_close(seen[1][0], x)          # the second forward sees the un-mixed batch
        assert not torch.allclose(seen[0][0], x)           # the first, the mixed one
    stem_bn = run.model.backbone.stem[1]
    assert int(stem_bn.num_batches_tracked) == len(seen)   # BN statistics updated by both passes


# ----------------------------------------------------------------------------- arc-mixup loss, warm-up, init

def test_arc_mixup_loss_is_minus_mean_log_dot_plus_eps_and_keeps_its_gradient():
    q_hat = torch.tensor([[0.6, 0.8, 0.0]])
    h = torch.tensor([[1e-9, 0.0, 1.0]], requires_grad=True)   # almost no mass on the pair's dimensions
    loss = arc_mixup_loss(h, q_hat, torch.ones(3))
    dot = 0.6 * 1e-9 / math.sqrt(1 + 1e-18)
    assert float(loss.detach()) == pytest.approx(-math.log(dot + ARC_LOSS_EPS), rel=1e-5)
    loss.backward()
    assert h.grad[0, 0] < 0  # a clamp at 1e-7 would give zero gradient here
    batch = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    expected = -(math.log(1.4 / math.sqrt(2) + 1e-18) + math.log(0.8 + 1e-18)) / 2
    assert float(arc_mixup_loss(batch, q_hat.expand(2, 3), torch.ones(3))) == pytest.approx(expected, rel=1e-6)


def test_warmup_starts_at_a_third_like_the_authors_scheduler():
    args = args_for("--method", "ce")
    factors = [lr_factor(e, args) for e in range(200)]
    # WarmupMultiStepLR(warmup_factor=1/3, warmup_epochs=5): 1/3 (1 - e/5) + e/5
    assert factors[:6] == pytest.approx([1 / 3, 7 / 15, 3 / 5, 11 / 15, 13 / 15, 1.0])
    assert factors[159] == 1.0 and factors[160] == pytest.approx(0.1) and factors[180] == pytest.approx(0.01)


def test_resnet32_kaiming_fan_in_init():
    torch.manual_seed(0)
    net = ResNet32((3, 32, 32), width=16)
    stem = net.stem[0].weight.detach()              # 16 x 3 x 3 x 3: fan_in 27, fan_out 144
    widening = net.blocks[5].conv1.weight.detach()  # 32 x 16 x 3 x 3: fan_in 144, fan_out 288
    for w in (stem, widening):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        assert float(w.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert abs(float(w.mean())) < 0.1 * math.sqrt(2 / fan_in) * 3


def test_cifar_normalisation_is_the_authors():
    for cls in (Cifar10LongTail, Cifar100LongTail):
        assert cls.TRANSFORM.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
        assert cls.TRANSFORM.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])


# ----------------------------------------------------------------------------- many / medium / few

def test_paper_groups_are_rank_ranges_after_sorting_by_count():
    counts = long_tail_counts(5000, 10, 100)
    assert shot_groups(counts, "paper", (3, 7)) == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    # unsorted labels (ImageNet-LT's are): ranks by count, ties by class index
    counts = [5, 50, 7, 50, 1, 7]
    assert shot_groups(counts, "paper", (2, 4)) == {"many": [1, 3], "medium": [2, 5], "few": [0, 4]}
    assert shot_groups(counts, "counts") == {"many": [], "medium": [1, 3], "few": [0, 2, 4, 5]}
    assert "[0, 2)" in describe_shot_groups("paper", (2, 4), 6) and ">" not in describe_shot_groups("paper", (2, 4), 6)


@pytest.mark.parametrize("dataset,ranks", [("cifar10-lt", (3, 7)), ("cifar100-lt", (36, 71)),
                                           ("imagenet-lt", (390, 835)), ("places-lt", (131, 288))])
def test_every_dataset_defaults_to_the_paper_ranks(dataset, ranks):
    a = main_lt.parse_args(["--dataset", dataset, "--method", "ce"])
    assert a.shot_groups == "paper" and get_lt_dataset_class(dataset).SHOT_RANKS == ranks
    assert main_lt.parse_args(["--dataset", dataset, "--method", "ce", "--shot_groups", "counts"]).shot_groups == \
        "counts"


# ----------------------------------------------------------------------------- results: final and best epoch

@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), 60, 4)


def test_results_hold_final_and_best_epoch_and_the_group_definition(cifar_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--dataset", "cifar10-lt", "--method", "arc-mixup", "--data_path", cifar_dir, "--n_epochs", "3",
            "--lr", "0.05", "--results_file", str(out)] + TINY
    assert main_lt.main(argv) == 0
    r = json.loads(out.read_text())
    per_epoch = r["test_accuracy_per_epoch"]
    assert list(per_epoch) == ["1", "2", "3"]
    keys = ("accuracy", "many_acc", "medium_acc", "few_acc")
    assert r["headline"] == "final epoch" and r["final_epoch"]["epoch"] == 3
    assert all(r[k] == r["final_epoch"][k] for k in keys) and r["accuracy"] == per_epoch["3"]
    best = r["best_epoch"]
    assert set(keys) <= set(best) and "test set" in best["selected_on"]
    assert best["accuracy"] == max(per_epoch.values())
    assert best["epoch"] == max(int(e) for e, a in per_epoch.items() if a == best["accuracy"])  # ties: later
    groups = r["shot_groups"]
    assert groups["definition"] == "paper" and "[3, 7)" in groups["description"]
    assert (groups["many"], groups["medium"], groups["few"]) == ([0, 1, 2], [3, 4, 5, 6], [7, 8, 9])
    assert "best epoch" in capsys.readouterr().out

    out2 = tmp_path / "r2.json"
    argv = argv[:-len(TINY) - 2] + ["--results_file", str(out2), "--eval_every", "0", "--shot_groups", "counts"]
    assert main_lt.main(argv + TINY) == 0
    r2 = json.loads(out2.read_text())
    assert list(r2["test_accuracy_per_epoch"]) == ["3"] and r2["best_epoch"]["epoch"] == 3
    assert r2["shot_groups"]["definition"] == "counts" and "more than 100" in r2["shot_groups"]["description"]


@pytest.mark.filterwarnings("ignore:Detected call of")  # no optimizer step: train_step is faked
def test_a_diverged_run_stops_with_the_shared_guard(cifar_dir, monkeypatch):
    monkeypatch.setattr(trainer, "train_step", lambda run, x, y: torch.tensor(float("nan")))
    args = args_for("--method", "ce", "--data_path", cifar_dir, "--n_epochs", "2", *TINY)
    with pytest.raises(DivergedError, match="in epoch 1.*--lr"):
        run_long_tail(args, log=lambda *a: None)


# ----------------------------------------------------------------------------- presets

@pytest.mark.parametrize("dataset,method,epochs,alpha,backbone", [
    ("imagenet-lt", "arc-mixup", 180, 5.0, "resnet50"), ("imagenet-lt", "mixup", 180, 0.2, "resnet50"),
    ("imagenet-lt", "etf-dr", 180, 0.2, "resnet50"), ("places-lt", "arc-mixup", 90, 0.2, "resnet152"),
    ("places-lt", "ce", 90, 0.2, "resnet152")])
def test_large_dataset_presets(dataset, method, epochs, alpha, backbone):
    a = main_lt.parse_args(["--dataset", dataset, "--method", method, "--load_best_args"])
    got = (a.batch_size, a.n_epochs, a.weight_decay, a.lr, a.schedule, a.warmup_epochs, a.mixup_alpha,
           a.color_jitter, a.amp, a.backbone)
    assert got == (256, epochs, 5e-4, 0.1, "cosine", 0, alpha, 0.4, "fp16", backbone)
    assert lr_factor(0, a) == 1.0 and lr_factor(epochs // 2, a) == pytest.approx(0.5)  # cosine to 0, no warm-up
    assert lr_factor(epochs - 1, a) == pytest.approx(0.5 * (1 + math.cos(math.pi * (epochs - 1) / epochs)))


def test_explicit_flags_win_over_the_preset_and_no_preset_without_the_flag():
    a = main_lt.parse_args(["--dataset", "imagenet-lt", "--method", "arc-mixup", "--load_best_args",
                            "--n_epochs", "7", "--mixup_alpha", "1.5", "--amp", "none", "--batch_size", "64"])
    assert (a.n_epochs, a.mixup_alpha, a.amp, a.batch_size, a.weight_decay) == (7, 1.5, "none", 64, 5e-4)
    b = main_lt.parse_args(["--dataset", "imagenet-lt", "--method", "arc-mixup"])
    assert (b.n_epochs, b.batch_size, b.weight_decay, b.amp, b.color_jitter, b.mixup_alpha) == \
        (200, 128, 2e-4, "none", 0.0, 1.0)
    c = main_lt.parse_args(["--dataset", "cifar10-lt", "--method", "arc-mixup", "--load_best_args"])
    protocol = (c.n_epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.warmup_epochs, c.lr_milestones)
    assert protocol == (200, 128, 0.1, 0.9, 2e-4, 5, [160, 180])
    assert (c.backbone, c.width, c.imbalance_ratio, c.schedule, c.mixup_alpha) == ("resnet32", 16, 100, "step", 1.0)
    d = main_lt.parse_args(["--dataset", "cifar100-lt", "--method", "arc-mixup", "--imbalance_ratio", "50"])
    assert (d.width, d.imbalance_ratio) == (32, 50)


def test_help_says_what_the_preset_sets(capsys):
    with pytest.raises(SystemExit):
        main_lt.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("imagenet-lt: batch_size 256", "n_epochs 180", "weight_decay 0.0005", "warmup_epochs 0",
                   "color_jitter 0.4", "amp fp16", "arc-mixup: mixup_alpha 5.0", "places-lt:", "n_epochs 90"):
        assert needle in text, needle


def one_line_error(argv, capsys):
    try:
        code = main_lt.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("main_lt.py: error: "), err
    return err


def test_fp16_on_the_cpu_is_a_one_line_error(cifar_dir, capsys):
    err = one_line_error(["--dataset", "cifar10-lt", "--method", "ce", "--amp", "fp16", "--data_path", cifar_dir]
                         + TINY, capsys)
    assert "--amp fp16" in err and "needs CUDA" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["arc-mixup", "etf-dr"])
def test_fp16_on_cuda_uses_a_grad_scaler_and_evaluation_does_not_sync(method, cifar_dir, tmp_path):
    device = torch.device("cuda")
    args = main_lt.parse_args(["--dataset", "cifar10-lt", "--method", method, "--amp", "fp16", "--device", "cuda",
                               "--width", "4", "--batch_size", "32"])
    run = build_run(args, Processes(), device, synthetic_data(device=device))
    assert run.scaler is not None
    for x, y in run.data.train.epoch(0):
        assert torch.isfinite(train_step(run, x, y))
    trainer.evaluate(run)  # first: cuDNN autotuning
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside evaluate raises
    try:
        hits, counts = trainer.evaluate(run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert hits.is_cuda and int(counts.sum()) == run.data.num_test
    out = tmp_path / "r.json"
    assert main_lt.main(["--dataset", "cifar10-lt", "--method", method, "--amp", "fp16", "--device", "cuda",
                         "--width", "4", "--batch_size", "32", "--n_epochs", "2", "--data_path", cifar_dir,
                         "--results_file", str(out)]) == 0
    assert json.loads(out.read_text())["args"]["amp"] == "fp16"


def test_color_jitter_on_cifar_is_a_one_line_error(cifar_dir, capsys):
    err = one_line_error(["--dataset", "cifar10-lt", "--method", "ce", "--color_jitter", "0.4",
                          "--data_path", cifar_dir] + TINY, capsys)
    assert "--color_jitter applies to" in err


# ----------------------------------------------------------------------------- --pretrained

def test_pretrained_loads_a_state_dict_the_test_writes(cifar_dir, tmp_path, capsys):
    torch.manual_seed(11)
    source = ResNet32((3, 32, 32), width=4)
    state = dict(source.state_dict(), **{"fc.weight": torch.zeros(10, 16), "fc.bias": torch.zeros(10)})
    path = tmp_path / "resnet32.pth"
    torch.save(state, path)
    args = args_for("--method", "ce", "--pretrained", str(path), *TINY)
    net = trainer.build_network(args, Cifar10LongTail(cifar_dir), LT_METHODS["ce"](
        args, Cifar10LongTail, torch.device("cpu")))
    for k, v in source.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[k], v), k
    # and end to end
    assert main_lt.main(["--dataset", "cifar10-lt", "--method", "ce", "--data_path", cifar_dir, "--n_epochs", "1",
                         "--pretrained", str(path)] + TINY) == 0


def test_pretrained_takes_torchvision_files_for_torchvision_resnets(tmp_path):
    from torchvision.models import resnet18

    class TinyTorchvision(TorchvisionResNet):  # the smallest torchvision ResNet: the same loading path
        ARCH = "resnet18"

    source = resnet18(weights=None)  # its state dict has torchvision's names and a 1000-way fc
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = TinyTorchvision((3, 32, 32))
    load_pretrained(backbone, str(path))
    torch.testing.assert_close(backbone.net.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(backbone.net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


@pytest.mark.parametrize("content,needle", [
    (b"this is not a checkpoint", "not a readable torch state-dict file"),
    (None, "no such file"),
    ("wrong width", "does not fit the ResNet32 backbone (missing"),
])
def test_bad_pretrained_files_are_one_line_errors(content, needle, cifar_dir, tmp_path, capsys):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save({"stem.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    err = one_line_error(["--dataset", "cifar10-lt", "--method", "ce", "--data_path", cifar_dir, "--n_epochs", "1",
                          "--pretrained", str(path)] + TINY, capsys)
    assert needle in err and str(path) in err
    with pytest.raises(DataError):
        load_pretrained(ResNet32((3, 32, 32), width=4), str(path))
