"""Three preset bugs against Mammoth and the X-DER release, each checked against the reference's behaviour.

* X-DER's strongly augmented consistency views never update the batch-norm running statistics (the
  release wraps them in ``bn_track_stats(self, False)``), also with ``--align_bn 0``.
* X-DER's end-of-task logit refresh passes the buffer through the network in a random order from the
  run's buffer generator (Mammoth draws the whole buffer with ``get_data(buffer_size)``), not in slot order.
* iCaRL's seq-cifar10 rows are Mammoth's table (``utils/best_args.py``): weight decay 1e-5 at every buffer.
"""
import copy

import pytest
import torch
from torch import nn

from datasets import get_dataset_class
from models.continual_model import Setting
from models.icarl import ICaRL
from models.xder import XDER
from utils.training import TaskData

DIGITS_TASKS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def setting(seed=0):
    digits = get_dataset_class("seq-digits")
    return Setting(device=torch.device("cpu"), task_of_class=torch.tensor(DIGITS_TASKS),
                   augment=lambda x: x.float(), buffer_generator=torch.Generator().manual_seed(seed),
                   n_tasks=digits.N_TASKS, input_shape=digits.INPUT_SHAPE, transform=digits.TRANSFORM)


def xder_args(make_args, *extra):
    return make_args("--dataset", "seq-digits", "--model", "xder", "--buffer_size", "12", "--lr", "0.1",
                     "--alpha", "0.1", "--beta", "0.5", "--simclr_batch_size", "4", "--simclr_num_aug", "2", *extra)


@pytest.mark.parametrize("align_bn", ["0", "1"])
def test_xder_consistency_views_leave_batch_norm_statistics_alone(make_args, align_bn):
    """First task, empty buffer: the step's passes are the stream batch (updates the statistics) and the
    strongly augmented views (must not); the running statistics end as after the stream batch alone."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model = XDER(net, xder_args(make_args, "--align_bn", align_bn), setting())
    model.train()
    raw = torch.randint(0, 17, (8, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    reference = copy.deepcopy(net).train()
    with torch.no_grad():
        reference(raw.float())
    model.xder_loss(raw.float(), labels, raw)
    bn, ref_bn = net[2], reference[2]
    assert torch.equal(bn.num_batches_tracked, ref_bn.num_batches_tracked)
    assert torch.allclose(bn.running_mean, ref_bn.running_mean) and torch.allclose(bn.running_var, ref_bn.running_var)


class Recorder(nn.Module):
    """A linear network that keeps every batch it is given."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 10)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.clone())
        return self.linear(x)


def refresh_order(make_args, buffer_seed):
    """The slots, in the order the end of task 1 passes the buffer's 12 entries through the network."""
    torch.manual_seed(0)
    net = Recorder()
    model = XDER(net, xder_args(make_args, "--batch_size", "64"), setting(buffer_seed))
    x_old, y_old = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    model.buffer.add_balanced(torch.full((10,), 4), examples=x_old, labels=y_old, logits=torch.randn(8, 10))
    x_new, y_new = torch.randn(20, 4), torch.tensor([2, 3] * 10)
    data = TaskData(1, x_new, y_new, torch.arange(20), torch.Generator().manual_seed(1), lambda v: v.float(),
                    lambda v: v.float())
    model.end_task(1, data)
    stored = model.buffer.fields["examples"][:len(model.buffer)]
    refresh = net.calls[-1]  # one batch: --batch_size 64 > 12 entries
    assert len(refresh) == len(stored) == 12
    match = (refresh.unsqueeze(1) == stored.unsqueeze(0)).all(2)
    assert match.sum(1).eq(1).all()
    return match.float().argmax(1).tolist()


def test_xder_task_end_refresh_runs_the_buffer_in_a_random_order_from_the_buffer_generator(make_args):
    order = refresh_order(make_args, 0)
    assert sorted(order) == list(range(12)), "every entry once"
    assert order != list(range(12)), "not slot order (each batch-norm batch would hold one task's classes)"
    assert refresh_order(make_args, 0) == order, "reproducible from the buffer generator"
    assert refresh_order(make_args, 1) != order, "drawn from the buffer generator"


# Mammoth's utils/best_args.py, seq-cifar10, icarl: (lr, optim_wd) per buffer size.
MAMMOTH_ICARL_SEQ_CIFAR10 = {200: (0.1, 1e-5), 500: (0.1, 1e-5), 5120: (0.03, 1e-5)}


def test_icarl_seq_cifar10_rows_are_mammoths_table():
    rows = ICaRL.BEST_ARGS["seq-cifar10"]
    assert {b: (r["lr"], r["optim_wd"]) for b, r in rows.items()} == MAMMOTH_ICARL_SEQ_CIFAR10


class Features(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.feature_dim = dim
        self.linear = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("n, batch_norm", [(9, False), (21, False), (21, True), (30, True)])
def test_icarl_merge_trains_stream_and_exemplars_in_steps_of_batch_size(make_args, n, batch_norm):
    """--icarl_merge 1 (Mammoth): an epoch over N stream samples and M exemplars takes ceil((N + M) / B)
    steps of B samples (a last single sample joins the step before under batch norm), each sample once."""
    from backbone.heads import FCHead, Network
    from utils.training import epoch_batches
    args = make_args("--dataset", "seq-digits", "--model", "icarl", "--buffer_size", "10", "--lr", "0.1",
                     "--batch_size", "10")
    assert args.icarl_merge == 1, "Mammoth's merge is the default"
    setting_ = Setting(device=torch.device("cpu"), task_of_class=torch.tensor([0, 0, 1, 1]),
                       augment=lambda x: x.float(), buffer_generator=torch.Generator().manual_seed(0))
    model = ICaRL(Network(Features(3), FCHead(3, 4)), args, setting_)
    exemplars = torch.rand(7, 3)
    model.buffer.add_balanced(torch.full((4,), 5), examples=exemplars, labels=torch.tensor([0, 1] * 3 + [0]))
    model.bn_layers = [nn.BatchNorm1d(1)] if batch_norm else []
    model.prepare_task(1)
    x, y = torch.rand(n, 3), torch.full((n,), 2)
    model.begin_task(1, TaskData(1, x, y, torch.arange(n), torch.Generator(), lambda v: v, lambda v: v))
    steps = []
    model.sgd_step = lambda inputs, labels: steps.append(inputs)
    for epoch in range(2):
        steps.clear()
        for batch in epoch_batches(torch.randperm(n), 10, 2 if batch_norm else 1):
            model.observe(x[batch], y[batch], x[batch])
        model.end_epoch()
        total = n + 7
        expect = total // 10 + (total % 10 > (1 if batch_norm else 0))
        assert len(steps) == expect and all(len(s) >= (2 if batch_norm else 1) for s in steps)
        seen = sorted(torch.cat(steps).tolist())
        assert seen == sorted(torch.cat((x, exemplars)).tolist())


# ----------------------------------------------------------------------------- FNO with the sigmoid methods

@pytest.mark.parametrize("model, extra", [("icarl", ["--buffer_size", "50"]), ("lwf_mc", [])])
def test_sigmoid_methods_refuse_a_head_with_non_negative_logits_without_an_offset(capsys, model, extra):
    import main as main_module
    argv = ["--dataset", "seq-digits", "--model", model, "--lr", "0.1", "--device", "cpu", "--results_file", "none",
            "--debug_mode", "1", *extra]
    assert main_module.main(argv + ["--classifier", "fno"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "every logit is >= 0" in err and "--bce_offset" in err
    for ok in (["--classifier", "fno", "--bce_offset", "5"], ["--classifier", "fc"], ["--classifier", "etf"]):
        assert main_module.main(argv + ok) == 0, ok


def test_bce_offset_shifts_every_sigmoid_of_both_networks(make_args):
    """The loss is BCE(logit - c) against one-hot labels (current task) and sigmoid(old logit - c) (earlier)."""
    import torch.nn.functional as F
    from utils.training import build_run
    run = build_run(make_args("--dataset", "seq-digits", "--model", "lwf_mc", "--lr", "0.1", "--classifier", "fno",
                              "--bce_offset", "3"))
    model = run.model
    with torch.no_grad():
        model.old_net.head.scale.fill_(2.0)
    model.prepare_task(1)
    model.begin_task(1, None)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([2, 3, 2, 3, 2, 3])
    logits, old = model.net(x)[:, :4], model.old_net(x)[:, :4]
    target = torch.cat((torch.sigmoid(old[:, :2] - 3), F.one_hot(y - 2, 2).float()), 1)
    expect = F.binary_cross_entropy_with_logits(logits - 3, target)
    assert torch.allclose(model.distillation_loss(x, y), expect)


@pytest.mark.parametrize("stream_batch, per_task", [("0", 200 // 5), ("1", 10)])
def test_agem_memory_per_task_is_a_split_of_the_buffer_or_one_stream_batch(make_args, stream_batch, per_task):
    """The paper: buffer_size // n_tasks samples of each task; --agem_stream_batch 1 (Mammoth master): one
    random batch of --batch_size samples."""
    from utils.training import build_run
    run = build_run(make_args("--dataset", "seq-digits", "--model", "agem", "--buffer_size", "200", "--lr", "0.1",
                              "--batch_size", "10", "--agem_stream_batch", stream_batch))
    model = run.model
    for task in range(2):
        x, y = torch.rand(60, 1, 8, 8), torch.full((60,), 2 * task)
        model.end_task(task, TaskData(task, x, y, torch.arange(60), torch.Generator(), lambda v: v, lambda v: v))
        assert len(model.buffer) == per_task * (task + 1)
        stored = model.buffer.fields["examples"][per_task * task:per_task * (task + 1)]
        assert all(any(torch.equal(s, row) for row in x) for s in stored)


@pytest.mark.parametrize("all_classes, columns", [("0", 4), ("1", 10)])
def test_icarl_bce_takes_the_seen_classes_or_all_of_them(make_args, all_classes, columns):
    """The paper: BCE over the classes seen so far; --icarl_all_classes 1 (Mammoth master): over all K, the
    later tasks' classes with target 0."""
    import torch.nn.functional as F
    from utils.training import build_run
    model = build_run(make_args("--dataset", "seq-digits", "--model", "icarl", "--buffer_size", "50", "--lr", "0.1",
                                "--icarl_all_classes", all_classes)).model
    model.prepare_task(1)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([2, 3, 2, 3])
    model.begin_task(1, TaskData(1, x, y, torch.arange(4), torch.Generator(), lambda v: v, lambda v: v))
    logits, old = model.net(x)[:, :columns], torch.sigmoid(model.old_net(x)[:, :2])
    target = torch.cat((old, F.one_hot(y, columns).float()[:, 2:]), 1)
    expect = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(model.distillation_loss(x, y), expect)
