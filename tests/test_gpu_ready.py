"""What a first GPU run needs, checked on the CPU: one backward pass per step (so CUDA graphs can replay a
step), refusals for what cannot be graphed, and the cuDNN choice as an operational flag."""
import copy

import pytest
import torch
import torch.nn.functional as F

import main as main_module
from backbone.heads import build_network
from models.continual_model import backward_terms
from utils.args import parse_args
from utils.flags import results_name


def resnet_args():
    return parse_args(["--dataset", "seq-cifar10", "--model", "er", "--buffer_size", "20", "--lr", "0.1",
                       "--backbone", "resnet18-narrow", "--device", "cpu", "--results_file", "none"])


def per_term_backward(net, terms):
    """The former rule with batch norm: every term forwarded and backpropagated at once, gradients accumulated."""
    total = 0.0
    for x, loss_of in terms:
        term = loss_of(net(x))
        term.backward()
        total = total + term.detach()
    return total


@pytest.mark.parametrize("n_terms", [2, 3])  # ER's stream and replay terms; DER++'s three
def test_one_backward_of_the_summed_terms_gives_the_per_term_gradients(n_terms):
    torch.manual_seed(0)
    net = build_network(resnet_args(), (3, 32, 32), 10)
    twin = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(n_terms)]
    labels = [torch.randint(0, 10, (8,), generator=gen) for _ in range(n_terms)]
    targets = torch.randn(8, 10, generator=gen)
    losses = [lambda out, y=labels[0]: F.cross_entropy(out, y),
              lambda out: 0.3 * F.mse_loss(out, targets),
              lambda out, y=labels[2] if n_terms > 2 else None: 0.5 * F.cross_entropy(out, y)][:n_terms]
    calls = []

    def backward(compute_loss):
        calls.append(1)
        term = compute_loss()
        term.backward()
        return term.detach()

    summed = backward_terms(net, list(zip(inputs, losses)), backward, batch_norm=True)
    expected = per_term_backward(twin, list(zip(inputs, losses)))
    assert len(calls) == 1  # one backward pass per step, whatever the number of terms
    assert torch.allclose(summed, expected, atol=1e-6)
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        if p.grad is not None or q.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    for a, b in zip(net.buffers(), twin.buffers()):  # each term is its own batch for the statistics, as before
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_a_method_with_two_backward_passes_refuses_cuda_graphs_in_one_line(capsys, mode):
    with pytest.raises(SystemExit) as exc:
        main_module.main(["--dataset", "seq-digits", "--model", "agem", "--buffer_size", "50", "--lr", "0.1",
                          "--device", "cpu", "--compile", mode])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and f"--compile {mode}" in err and "agem" in err


def test_deterministic_is_an_operational_flag():
    """--deterministic changes which cuDNN kernels run, not what a run computes: it is not in results names."""
    args = parse_args(["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--device", "cpu",
                       "--deterministic", "1", "--results_file", "none"])
    assert args.deterministic == 1
    flags = {"dataset": "seq-digits", "model": "sgd", "lr": 0.1}
    assert results_name({**flags, "deterministic": 1}) == results_name(flags)


@pytest.mark.parametrize("padding,flip", [(4, True), (0, True), (2, False)])
def test_augmenting_every_seed_at_once_equals_each_seeds_own_augmentation(padding, flip):
    """The stacked trainer's augmentation: one gather and one normalisation for S seeds' images, each seed's
    crops and flips drawn from its own generator with its single run's calls (values and streams bitwise)."""
    from datasets.utils.transforms import DeviceTransform
    transform = DeviceTransform(255.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_padding=padding, flip=flip)
    x = torch.randint(0, 256, (6, 3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    together_gens = [torch.Generator().manual_seed(10 + s) for s in range(3)]
    apart_gens = [torch.Generator().manual_seed(10 + s) for s in range(3)]
    together = transform.train_seeds(x, together_gens)
    apart = torch.stack([transform.train(x[:, s], apart_gens[s]) for s in range(3)], 1)
    assert together.is_contiguous() and torch.equal(together, apart)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(together_gens, apart_gens))


def test_plain_sgd_and_its_schedule_are_torchs_numbers_without_its_bookkeeping():
    """The default optimizer (one add_ per parameter) updates exactly as torch.optim.SGD, and its step schedule
    gives MultiStepLR's learning rates epoch by epoch (seq-cifar100's milestones), with no warning."""
    import warnings

    from models.continual_model import MultiStepSchedule, PlainSGD
    ours = [torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))]
    theirs = [torch.nn.Parameter(ours[0].detach().clone())]
    opt, ref = PlainSGD(ours, lr=0.1), torch.optim.SGD(theirs, lr=0.1)
    schedule = MultiStepSchedule(opt, (35, 45), 0.1)
    ref_schedule = torch.optim.lr_scheduler.MultiStepLR(ref, milestones=[35, 45], gamma=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(50):
            grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(epoch))
            opt.zero_grad()
            ours[0].grad = grad.clone()
            opt.step()
            theirs[0].grad = grad.clone()
            ref.step()
            schedule.step()
            ref_schedule.step()
            assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
            assert torch.equal(ours[0], theirs[0])
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != 0.1
