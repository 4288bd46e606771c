"""X-DER, iCaRL and GDumb (models/xder.py, icarl.py, gdumb.py) and the class-balanced memory they share.

Every method runs with every head, and with the masked softmax where it
applies (elsewhere it is refused in one line), on seq-digits, seq-mnist and
the three image benchmarks; each is checked against its definition on
hand-made cases; a run resumed from its checkpoint ends as an uninterrupted one.

The seq-digits rows of the methods' BEST_ARGS are this project's own choice,
from a small sweep at buffer 200 (seeds 0 and 1, FC and FNO heads, the
dataset's 5 epochs, --masked_softmax 0; the best mean final Class-IL over
those four runs; the row then serves buffers 50, 200 and 500 alike):
  xder:  lr {0.03, 0.1} x alpha {0.1, 0.3} x beta {0.5, 1.0} x past_constraint {0, 1}, the other flags at
         Mammoth's defaults -> lr 0.1, alpha 0.1, beta 1.0, past_constraint 1 (90.2; without the past
         constraint at most 84.6: the current task's head stays below the earlier ones);
  icarl: lr {0.03, 0.1, 0.3, 0.5, 1.0} x optim_wd {0, 1e-5} -> lr 0.3, optim_wd 1e-5 (86.4);
  gdumb: maxlr {0.05, 0.1} x fitting_epochs {32, 64, 128}, the rest GDumb's recipe (momentum 0.9, weight
         decay 1e-6, minlr 0.0005, cutmix alpha 1 with probability 0.5) -> maxlr 0.05, fitting_epochs 128
         (95.0; 64 epochs 94.5).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main as main_module
from backbone.heads import FCHead, Network, build_network
from datasets import get_dataset_class
from models import get_model_class
from models.continual_model import Setting
from models.gdumb import GDumb
from models.icarl import ICaRL, herding
from models.xder import XDER, update_logits
from utils.callbacks import Callback
from utils.seeding import make_generator
from utils.training import TaskData, build_run, run_experiment

# Cheap settings: the methods' definitions, not their accuracy, are under test here.
FLAGS = {
    "xder": ["--alpha", "0.2", "--beta", "1.0", "--lr", "0.03", "--simclr_batch_size", "8", "--simclr_num_aug", "2"],
    "icarl": ["--lr", "0.1", "--bce_offset", "5"],  # FNO's logits are >= 0: refused without an offset
    "gdumb": ["--maxlr", "0.1", "--fitting_epochs", "16"],
}
MASKED = {"xder": ("0", "1"), "icarl": ("0",), "gdumb": ("0",)}


def quiet(*_):
    pass


def run(make_args, method, *extra):
    return run_experiment(make_args("--model", method, *FLAGS[method], "--n_epochs", "1", "--nowand", "1", *extra),
                          log=quiet)


# ----------------------------------------------------------------------------- every head, every benchmark

@pytest.mark.parametrize("head", ["fc", "fno", "etf", "orth"])
@pytest.mark.parametrize("method", sorted(FLAGS))
def test_runs_and_learns_on_digits_with_every_head(make_args, method, head):
    res = run(make_args, method, "--dataset", "seq-digits", "--buffer_size", "50", "--classifier", head,
              "--masked_softmax", MASKED[method][-1])
    assert len(res["acc_matrix_class_il"]) == 5
    assert res["task_il"] > 60, "two classes per task: chance is 50"
    assert res["class_il"] > 20 if method != "gdumb" else res["class_il"] > 10


@pytest.mark.parametrize("method", sorted(FLAGS))
def test_runs_on_mnist_files_with_every_head_and_mask(make_args, mnist_dir, method):
    for head in ("fc", "fno", "etf", "orth"):
        for masked in MASKED[method]:
            res = run(make_args, method, "--dataset", "seq-mnist", "--data_path", mnist_dir, "--buffer_size", "20",
                      "--classifier", head, "--masked_softmax", masked)
            assert res["n_steps"] == 20 and len(res["acc_matrix_task_il"]) == 5
            assert all(0 <= a <= 100 for a in res["acc_matrix_task_il"][-1])


def test_xder_stream_loss_is_the_masked_softmax_either_way(make_args, mnist_dir):
    """X-DER's stream term is the current task's head by definition: both flag values run the same loss."""
    a, b = (run(make_args, "xder", "--dataset", "seq-mnist", "--data_path", mnist_dir, "--buffer_size", "20",
                "--masked_softmax", masked) for masked in ("0", "1"))
    assert a["acc_matrix_class_il"] == b["acc_matrix_class_il"]


@pytest.fixture(scope="module")
def image_roots(tmp_path_factory):
    """One training image per class (the least every task accepts) and one test image per task."""
    from tests.test_image_datasets import write_tiny_cifar, write_tiny_imagenet
    roots = {name: tmp_path_factory.mktemp(name) for name in ("cifar10", "cifar100", "tiny")}
    write_tiny_cifar(roots["cifar10"], "cifar10", 1, range(10))
    write_tiny_cifar(roots["cifar100"], "cifar100", 1, range(0, 100, 10))
    write_tiny_imagenet(str(roots["tiny"]), 200, 1, range(0, 200, 20))
    return roots


# The cheapest settings that still exercise every term (a replay batch of 2, one retraining epoch, ...).
IMAGE_FLAGS = {
    "xder": ["--alpha", "0.2", "--beta", "1.0", "--lr", "0.03", "--minibatch_size", "2", "--simclr_batch_size", "2",
             "--simclr_num_aug", "2"],
    "icarl": ["--lr", "0.1", "--bce_offset", "5"],  # FNO's logits are >= 0: refused without an offset
    "gdumb": ["--lr", "0.1", "--fitting_epochs", "1"],
}


@pytest.mark.parametrize("method", sorted(IMAGE_FLAGS))
def test_image_benchmarks_with_one_epoch(make_args, image_roots, method):
    """The whole of seq-cifar10, and the first two tasks of seq-cifar100 and seq-tinyimg (a ResNet on a
    CPU makes their ten tasks too slow for a test; two tasks reach every code path of a later task)."""
    from utils.training import evaluate, stages, train_stage
    flags = ["--model", method, *IMAGE_FLAGS[method], "--n_epochs", "1", "--backbone", "resnet18-narrow",
             "--classifier", "fno", "--nowand", "1"]
    res = run_experiment(make_args(*flags, "--dataset", "seq-cifar10", "--data_path", str(image_roots["cifar10"]),
                                   "--buffer_size", "10"), log=quiet)
    assert len(res["acc_matrix_class_il"]) == 5
    for dataset, root, classes in (("seq-cifar100", "cifar100", 100), ("seq-tinyimg", "tiny", 200)):
        partial = build_run(make_args(*flags, "--dataset", dataset, "--data_path", str(image_roots[root]),
                                      "--buffer_size", str(classes)))
        for data in stages(partial)[:2]:
            train_stage(partial, data)
            cil, til = evaluate(partial, data.task + 1)
            assert len(cil) == data.task + 1 and all(0 <= a <= 100 for a in til)


@pytest.mark.parametrize("argv,message", [
    (["--model", "icarl", "--lr", "0.1", "--masked_softmax", "1"], "no softmax to mask"),
    (["--model", "gdumb", "--lr", "0.1", "--masked_softmax", "1"], "no stream batch"),
    (["--model", "gdumb", "--lr", "0.1", "--n_epochs", "2"], "--n_epochs 1"),
    (["--model", "icarl", "--lr", "0.1", "--buffer_size", "5"], "at least one slot per class"),
])
def test_what_does_not_apply_is_refused_in_one_line(capsys, argv, message):
    try:
        rc = main_module.main(["--dataset", "seq-digits", "--buffer_size", "50", "--device", "cpu", "--nowand", "1",
                               *argv])
    except SystemExit as exc:  # refused by the parser, before any data is read
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_best_args_load_for_every_method_on_digits(make_args):
    for method in FLAGS:
        for buffer in ("50", "200", "500"):
            args = make_args("--dataset", "seq-digits", "--model", method, "--buffer_size", buffer, "--load_best_args")
            assert args.lr is not None
    assert make_args("--dataset", "seq-cifar100", "--model", "xder", "--buffer_size", "500",
                     "--load_best_args").constr_margin == 0.7


# ----------------------------------------------------------------------------- X-DER against its definition

def bare_setting(task_of_class, dataset="seq-digits"):
    cls = get_dataset_class(dataset)
    return Setting(device=torch.device("cpu"), task_of_class=torch.tensor(task_of_class),
                   augment=lambda x: x.float(), buffer_generator=torch.Generator().manual_seed(0),
                   n_tasks=max(task_of_class) + 1, input_shape=cls.INPUT_SHAPE, transform=cls.TRANSFORM)


def task_data(task, x, y):
    return TaskData(task, x, y, torch.arange(len(y)), torch.Generator().manual_seed(1), lambda v: v.float(),
                    lambda v: v.float())


def test_xder_task_end_rewrites_past_logits_as_specified(make_args):
    """At the end of task 1 (classes 2-3) with gamma 0.5: each class keeps 12 // 4 = 3 entries; every
    earlier entry's columns 2.. become the network's, times 0.5 * own / max when their max exceeds
    the entry's own stored logit; columns 0-1 stay; the task's entries get the network's logits with
    columns 0-1 scaled the same way."""
    args = make_args("--dataset", "seq-digits", "--model", "xder", "--buffer_size", "12", "--alpha", "0.1",
                     "--beta", "0.1", "--lr", "0.1", "--gamma", "0.5")
    torch.manual_seed(0)
    net = nn.Linear(4, 6)
    model = XDER(net, args, bare_setting([0, 0, 1, 1, 2, 2]))
    x_old = torch.randn(8, 4)
    y_old = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    stored = torch.randn(8, 6)
    stored[:4, :2] += 10.0  # own logits far above the network's: copied unscaled
    stored[4:, :2] -= 10.0  # far below: scaled down
    model.buffer.add_balanced(torch.full((6,), 4), examples=x_old, labels=y_old, logits=stored)
    x_new, y_new = torch.randn(20, 4), torch.tensor([2, 3] * 10)
    model.end_task(1, task_data(1, x_new, y_new))

    fields, n = model.buffer.fields, len(model.buffer)
    assert n == 12 and model.buffer.counts.tolist() == [3, 3, 3, 3, 0, 0]
    kept = [0, 1, 2, 3, 4, 5]  # the three oldest of classes 0 and 1
    with torch.no_grad():
        for slot, i in enumerate(kept):
            assert torch.equal(fields["examples"][slot], x_old[i])
            out, own = net(x_old[i]), stored[i, y_old[i]]
            expect = stored[i].clone()
            top = out[2:].max()
            expect[2:] = out[2:] * (0.5 * own / top if top > own else 1.0)
            assert torch.allclose(fields["logits"][slot], expect, atol=1e-6)
            assert (top > own) == (i >= 4)
        for slot in range(6, 12):
            x, y = fields["examples"][slot], int(fields["labels"][slot])
            assert y in (2, 3) and any(torch.equal(x, row) for row in x_new)
            out = net(x)
            expect = out.clone()
            top = out[:2].max()
            if top > out[y]:
                expect[:2] = out[:2] * 0.5 * out[y] / top
            assert torch.allclose(fields["logits"][slot], expect, atol=1e-6)
    assert model.update_counter.abs().sum() == 0


def test_update_logits_scales_only_rows_whose_block_exceeds_their_own_logit():
    old = torch.tensor([[4.0, 0.0, 1.0, 1.0], [1.0, 0.0, 3.0, 2.0]])
    new = torch.tensor([[9.0, 9.0, 2.0, 8.0], [9.0, 9.0, 0.5, 0.25]])
    out = update_logits(old, new, torch.tensor([0, 0]), 2, 4, gamma=0.5)
    assert out.tolist() == [[4.0, 0.0, 0.5, 2.0], [1.0, 0.0, 0.5, 0.25]]  # row 0: x 0.5*4/8; row 1 copied


def test_supcon_equals_its_anchor_by_anchor_definition():
    from models.xder import supervised_contrastive
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64), dim=3)
    labels = torch.tensor([0, 1, 0, 2, 1])
    expected = 0.0
    for head in feats:
        views = [(i, v) for v in range(3) for i in range(5)]  # view-major anchors
        for i, v in views:
            others = [(j, u) for j, u in views if (j, u) != (i, v)]
            sims = {(j, u): float(head[i, v] @ head[j, u]) / 0.5 for j, u in others}
            log_norm = torch.logsumexp(torch.tensor(list(sims.values()), dtype=torch.float64), 0)
            positives = [sims[p] - log_norm for p in others if labels[p[0]] == labels[i]]
            expected += -float(sum(positives) / len(positives)) / 3  # mean over the sample's views
    assert abs(float(supervised_contrastive(feats, labels, 0.5, 3)) - expected) < 1e-9


def test_strong_augment_flip_folded_into_the_crop_equals_flipping_first():
    import math
    from datasets.utils.transforms import DeviceTransform
    from models.xder import StrongAugment
    x = torch.rand(6, 3, 9, 7)
    out = StrongAugment(DeviceTransform(scale=1.0), torch.device("cpu"),
                        torch.Generator().manual_seed(0)).flipped_resized_crop(x)
    gen, n = torch.Generator().manual_seed(0), 6  # the same draws, in the same order
    flip = torch.rand(n, generator=gen) < 0.5
    uniform = lambda low, high: low + (high - low) * torch.rand(n, generator=gen)  # noqa: E731
    area, ratio = uniform(0.2, 1.0), torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = torch.sqrt(area * ratio).clamp(max=1), torch.sqrt(area / ratio).clamp(max=1)
    cx, cy = (1 - w) * uniform(0, 1) + w / 2, (1 - h) * uniform(0, 1) + h / 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, 2 * cx - 1, h, 2 * cy - 1
    flipped = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    expected = F.grid_sample(flipped, F.affine_grid(theta, list(x.shape), align_corners=False),
                             mode="bilinear", padding_mode="border", align_corners=False)
    assert 0 < int(flip.sum()) < n and torch.allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------------- iCaRL against its definition

def herding_reference(features, m):
    """One class, one pick at a time: the row making the running mean closest to the class mean."""
    mean, total, picked = features.mean(0), torch.zeros(features.shape[1], dtype=features.dtype), []
    for i in range(min(m, len(features))):
        cost = [float("inf") if j in picked else float((mean - (features[j] + total) / (i + 1)).norm())
                for j in range(len(features))]
        best = min(range(len(features)), key=cost.__getitem__)
        picked.append(best)
        total = total + features[best]
    return picked


def test_herding_picks_the_running_mean_closest_to_the_class_mean():
    # by hand, class 0 on a line: mean 3.2 -> 3 (mean 3); then (3 + f) / 2 nearest 3.2 -> f = 2 gives 2.5,
    # f = 10 gives 6.5, so 2; then (5 + f) / 3 -> 10 gives 5, 1 gives 2, 0 gives 1.67: 1 (|2 - 3.2| < |5 - 3.2|)
    feats = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [7.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 0, 1])
    picks = herding(feats, labels, torch.tensor([0, 1]), 3)
    assert picks.tolist() == [3, 5, 2, 1]  # step-major: class 0's first, class 1's only, class 0's second, ...
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(70, 5, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(4, 8, (70,), generator=gen)
    picks = herding(feats, labels, torch.tensor([4, 5, 6, 7]), 6)
    for c in range(4, 8):
        rows = torch.nonzero(labels == c).flatten()
        mine = [int(p) for p in picks if labels[p] == c]
        assert mine == rows[herding_reference(feats[rows], 6)].tolist()


class Features(nn.Module):
    """A backbone whose features are its (flattened) inputs."""

    def __init__(self, dim):
        super().__init__()
        self.feature_dim = dim
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.flatten(1)


def test_icarl_nearest_mean_of_exemplars_equals_a_hand_computation(make_args):
    args = make_args("--dataset", "seq-digits", "--model", "icarl", "--buffer_size", "10", "--lr", "0.1")
    net = Network(Features(3), FCHead(3, 4))
    model = ICaRL(net, args, bare_setting([0, 0, 1, 1]))
    exemplars = torch.tensor([[1.0, 0, 0], [3, 1, 0], [0, 2, 0], [0, 1, 1], [0, 0, 5]])
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 3 has no exemplar
    model.buffer.add_balanced(torch.full((4,), 5), examples=exemplars, labels=labels)
    model.compute_class_means(lambda v: v.float())
    model.eval()
    x = torch.tensor([[2.0, 0.5, 0.1], [0.1, 1.0, 1.2], [0.0, 0.2, 3.0]])
    with torch.no_grad():
        scores = model(x)
    unit = lambda v: v / v.norm()  # noqa: E731
    for i, xi in enumerate(x):
        for c in range(4):
            members = [unit(e) for e, y in zip(exemplars, labels) if y == c]
            if not members:
                assert scores[i, c] == float("-inf")
                continue
            mean = unit(sum(members) / len(members))
            assert abs(float(scores[i, c]) + float(((unit(xi) - mean) ** 2).sum())) < 1e-5
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_icarl_memory_keeps_herding_choices_within_its_budget(make_args):
    args = make_args("--dataset", "seq-digits", "--model", "icarl", "--buffer_size", "10", "--lr", "0.1")
    net = Network(Features(3), FCHead(3, 4))
    model = ICaRL(net, args, bare_setting([0, 0, 1, 1]))
    gen = torch.Generator().manual_seed(3)
    x0, y0 = torch.rand(30, 3, generator=gen), torch.arange(30) % 2
    model.end_task(0, task_data(0, x0, y0))
    assert model.buffer.counts.tolist() == [5, 5, 0, 0]
    chosen = herding(F.normalize(x0, dim=1), y0, torch.tensor([0, 1]), 5)
    assert model.buffer.fields["examples"][:10].tolist() == x0[chosen].tolist()
    x1, y1 = torch.rand(30, 3, generator=gen), 2 + torch.arange(30) % 2
    model.end_task(1, task_data(1, x1, y1))
    assert model.buffer.counts.tolist() == [2, 2, 2, 2]  # 10 // 4 = 2 per class, old and new alike
    first_two = [x0[i].tolist() for i in chosen[:4]]        # each old class's two best exemplars
    assert model.buffer.fields["examples"][:4].tolist() == first_two
    assert torch.equal(model.old_net.head.weight, net.head.weight) and model.has_mean.all()


def test_icarl_replays_every_exemplar_once_per_epoch_spread_over_its_batches(make_args):
    """Mammoth trains iCaRL on the task's data merged with the exemplars: here each exemplar joins
    one stream batch per epoch, and the trainer's batch count per epoch is known beforehand."""
    from utils.training import epoch_batches
    args = make_args("--dataset", "seq-digits", "--model", "icarl", "--buffer_size", "10", "--lr", "0.1")
    model = ICaRL(Network(Features(3), FCHead(3, 4)), args, bare_setting([0, 0, 1, 1]))
    model.buffer.add_balanced(torch.full((4,), 5), examples=torch.rand(7, 3), labels=torch.tensor([0, 1] * 3 + [0]))
    for n in (1, 9, 10, 11, 21, 30):
        for batch_norm in (False, True):
            model.bn_layers, args.batch_size = [nn.BatchNorm1d(1)] if batch_norm else [], 10
            model.begin_task(1, task_data(1, torch.rand(n, 3), torch.full((n,), 2)))
            steps = len(epoch_batches(torch.arange(n), 10, 2 if batch_norm else 1))
            assert model.steps_per_epoch == steps
            for _ in range(2):  # two epochs, each a new order
                seen = []
                for _ in range(steps):
                    extra = model.exemplar_batch()
                    seen += [] if extra is None else extra[0].tolist()
                assert sorted(seen) == sorted(model.buffer.fields["examples"][:7].tolist())
                model.end_epoch()


# ----------------------------------------------------------------------------- GDumb against its definition

def test_gdumb_memory_is_class_balanced_and_the_network_restarts_from_a_fresh_build(make_args, monkeypatch):
    args = make_args("--dataset", "seq-digits", "--model", "gdumb", "--buffer_size", "50", "--lr", "0.1",
                     "--fitting_epochs", "2", "--n_epochs", "1", "--seed", "4")
    starts, counts = [], []
    original = GDumb.fit_memory

    def record(self):
        starts.append({k: v.clone() for k, v in self.net.state_dict().items()})
        counts.append(self.buffer.counts.clone())
        original(self)
    monkeypatch.setattr(GDumb, "fit_memory", record)
    res = run_experiment(args, log=quiet)
    assert len(starts) == 5 and len(res["acc_matrix_class_il"]) == 5
    for task, c in enumerate(counts):
        held = c[:2 * (task + 1)]
        assert held.sum() == 50 and held.max() - held.min() <= 1 and c[2 * (task + 1):].sum() == 0
    # the first retraining starts from a fresh build seeded by the first draw from GDumb's own stream
    # (later draws depend on how many the retrainings made), and every retraining starts afresh
    seed = int(torch.randint(0, 2 ** 62, (), generator=make_generator(4, "gdumb")))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        digits = get_dataset_class("seq-digits")
        fresh = build_network(args, digits.INPUT_SHAPE, digits.N_TASKS * digits.N_CLASSES_PER_TASK).state_dict()
    assert all(torch.equal(starts[0][k], fresh[k]) for k in fresh)
    for before, after in zip(starts, starts[1:]):
        assert not torch.equal(before["backbone.layers.1.weight"], after["backbone.layers.1.weight"])
        assert after["backbone.layers.1.bias"].abs().sum() == 0  # Xavier init: zero biases, not trained ones


def test_reinitialised_mlp_follows_a_fresh_builds_scheme(make_args):
    """Xavier-uniform weights and zero biases for the MLP and its FC head; a fixed head keeps its matrix."""
    for head in ("fc", "fno"):
        args = make_args("--dataset", "seq-mnist", "--model", "sgd", "--lr", "0.1", "--classifier", head)
        model = build_run_without_data(args)
        fixed = {k: v.clone() for k, v in model.net.state_dict().items() if k.endswith("head.weight")}
        with torch.no_grad():
            for p in model.net.parameters():
                p.add_(1.0)  # as after training
        model.reinitialise_network(torch.Generator().manual_seed(0))
        for name, p in model.net.named_parameters():
            p = p.detach()
            if name.endswith("bias"):
                assert p.abs().sum() == 0, name
            elif p.dim() == 2:
                bound = (6 / sum(p.shape)) ** 0.5
                assert p.abs().max() <= bound and abs(float(p.std()) - bound / 3 ** 0.5) < 0.1 * bound, name
        if head == "fno":
            assert torch.equal(model.net.head.weight, fixed["head.weight"]) and float(model.net.head.scale.detach()) == 1
        again = copy.deepcopy(model)
        model.reinitialise_network(torch.Generator().manual_seed(0))
        again.reinitialise_network(torch.Generator().manual_seed(0))
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def build_run_without_data(args):
    """A model on seq-mnist's network without reading MNIST (only shapes are needed)."""
    dataset = get_dataset_class(args.dataset)("unused")
    net = build_network(args, dataset.INPUT_SHAPE, dataset.num_classes)
    return get_model_class(args.model)(net, args, bare_setting([t // 2 for t in range(10)], args.dataset))


# ----------------------------------------------------------------------------- checkpoints

class StopAfter(Callback):
    def __init__(self, tasks):
        self.tasks = tasks

    def on_stage_end(self, run, stage, history):
        if history["stages_done"] == self.tasks:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", sorted(FLAGS))
def test_resumed_run_ends_like_an_uninterrupted_one(make_args, tmp_path, method):
    flags = ["--model", method, *FLAGS[method], "--dataset", "seq-digits", "--buffer_size", "50", "--n_epochs", "1",
             "--nowand", "1", "--seed", "2", "--classifier", "fno"]
    whole = run_experiment(make_args(*flags), log=quiet)
    ckpt = ["--checkpoint_dir", str(tmp_path), "--resume"]
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_args(*flags, *ckpt), log=quiet, callbacks=[StopAfter(2)])
    resumed = run_experiment(make_args(*flags, *ckpt), log=quiet)
    assert resumed["acc_matrix_class_il"] == whole["acc_matrix_class_il"]
    assert resumed["acc_matrix_task_il"] == whole["acc_matrix_task_il"]


def test_gdumb_needs_no_lr_and_takes_no_stream_steps(make_args, capsys):
    """GDumb only fills its memory on the stream and retrains from --maxlr to --minlr: --lr is not asked for
    and no stream optimizer is built (its checkpoints resume without one: the resume test's GDumb flags give
    no --lr).  Methods that step with --lr still require it."""
    args = make_args("--dataset", "seq-digits", "--model", "gdumb", "--buffer_size", "50", "--n_epochs", "1")
    assert args.lr is None
    run = build_run(args)
    run.model.prepare_task(0)
    assert run.model.opt is None and run.model.scheduler is None
    with pytest.raises(SystemExit):
        make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--minibatch_size", "10")
    assert "--lr" in capsys.readouterr().err
