"""The continual-learning protocol against the authors' definitions: MLP initialisation, Mammoth's
unmasked ER and DER++, and how --load_best_args resolves."""
import copy
import math

import pytest
import torch
from torch import nn

from models.continual_model import backward_terms
from utils.training import build_run


def xavier_bound(layer: nn.Linear) -> float:
    fan_out, fan_in = layer.weight.shape
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("classifier", ["fc", "fno"])
def test_mlp_and_fc_head_start_xavier_uniform_with_zero_biases(make_args, classifier):
    run = build_run(make_args("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--classifier", classifier))
    layers = [m for m in run.model.net.backbone.modules() if isinstance(m, nn.Linear)]
    if classifier == "fc":
        layers.append(run.model.net.head)
    else:  # the fixed head keeps its matrix Q and its scale 1
        q = run.model.net.head.weight
        assert torch.allclose(q @ q.T, torch.eye(len(q)), atol=1e-6) and float(run.model.net.head.scale.detach()) == 1.0
    assert len(layers) == (3 if classifier == "fc" else 2)
    for layer in layers:
        a, w = xavier_bound(layer), layer.weight.detach()
        assert float(w.abs().max()) <= a
        # uniform on [-a, a]: the largest |w| is close to a and the std is a / sqrt(3)
        assert float(w.abs().max()) > 0.95 * a
        assert abs(float(w.std()) - a / math.sqrt(3)) < 0.08 * a
        assert torch.count_nonzero(layer.bias) == 0


def test_resnet18_keeps_pytorch_default_init(make_args):
    run = build_run(make_args("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--backbone", "resnet18"))
    head = run.model.net.head
    # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    bound = 1 / math.sqrt(head.weight.shape[1])
    assert float(head.weight.detach().abs().max()) <= bound and torch.count_nonzero(head.bias) > 0


class CountForwards(nn.Module):
    """Wraps a network and records the batch size of every forward call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        self.calls.append(len(x))
        return self.net(x)


def replay_model(make_args, model, masked, buffer_size=50, minibatch=7):
    args = make_args("--dataset", "seq-digits", "--model", model, "--masked_softmax", str(masked),
                     "--buffer_size", str(buffer_size), "--minibatch_size", str(minibatch),
                     "--batch_size", "5", "--load_best_args")
    run = build_run(args)
    run.model.prepare_task(0)
    run.model.train()
    return run


def stream_batches(run, n):
    for i in range(n):
        idx = torch.arange(5 * i, 5 * i + 5)
        raw, y = run.train.x[idx], run.train.y[idx]
        yield run.transform.train(raw, run.augment_generator), y, raw


# step 1: empty buffer; step 2: 5 stored, so 5 replayed; step 3: 10 stored, 7 replayed
@pytest.mark.parametrize("masked, batch_norm, expected", [(0, False, [5, 10, 12]), (0, True, [5, 10, 12]),
                                                          (1, False, [5, 10, 12]), (1, True, [5, 5, 5, 5, 7])])
def test_er_forward_passes(make_args, masked, batch_norm, expected):
    """Unmasked (Mammoth's ER): one pass over stream + replay concatenated, one batch for batch norm.
    Masked: a stream term and a replay term, in separate passes with batch norm (each its own batch), in one
    merged pass without it (``backward_terms``)."""
    run = replay_model(make_args, "er", masked)
    counter = CountForwards(run.model.net)
    run.model.net = counter
    run.model.bn_layers = [nn.BatchNorm1d(1)] if batch_norm else []  # what the trainer decides on
    for x, y, raw in stream_batches(run, 3):
        run.model.observe(x, y, raw)
    assert counter.calls == expected


class TwoTerms:
    """Two loss terms on a small network, with and without batch norm."""

    def __init__(self, batch_norm):
        torch.manual_seed(0)
        layers = [nn.Linear(6, 8)] + [nn.BatchNorm1d(8)] * batch_norm + [nn.ReLU(), nn.Linear(8, 3)]
        self.net = CountForwards(nn.Sequential(*layers))
        self.xs = torch.randn(5, 6), torch.randn(7, 6)
        self.ys = torch.randint(0, 3, (5,)), torch.randint(0, 3, (7,))

    def separate(self):
        """The reference: each term's own forward pass and backward, gradients accumulated."""
        self.net.zero_grad(set_to_none=True)
        total = 0.0
        for x, y in zip(self.xs, self.ys):
            term = nn.functional.cross_entropy(self.net(x), y)
            term.backward()
            total += float(term.detach())
        return total, [p.grad.clone() for p in self.net.parameters()]

    def merged(self):
        self.net.zero_grad(set_to_none=True)

        def backward(compute):
            term = compute()
            term.backward()
            return term.detach()
        terms = [(x, lambda out, y=y: nn.functional.cross_entropy(out, y)) for x, y in zip(self.xs, self.ys)]
        loss = backward_terms(self.net, terms, backward, batch_norm=any(
            isinstance(m, nn.BatchNorm1d) for m in self.net.modules()))
        return float(loss), [p.grad.clone() for p in self.net.parameters()]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_backward_terms_computes_the_separate_passes_loss_and_gradients(batch_norm):
    """Merged (no batch norm: one pass of 12) or separate (batch norm: passes of 5 and 7), the summed loss
    and the gradients are those of one forward and backward per term."""
    case = TwoTerms(batch_norm)
    loss, grads = case.merged()
    assert case.net.calls == ([5, 7] if batch_norm else [12])
    ref_loss, ref_grads = case.separate()
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    if not batch_norm:  # the merge is only right without batch norm: with it the statistics would mix
        case.net.net.insert(1, nn.BatchNorm1d(8))
        case.net.net.train()
        separate_bn = case.separate()[0]
        case.net.calls.clear()
        outs = case.net(torch.cat(case.xs)).split([5, 7])
        mixed = sum(float(nn.functional.cross_entropy(o, y).detach()) for o, y in zip(outs, case.ys))
        assert abs(mixed - separate_bn) > 1e-4


def test_unmasked_er_loss_is_one_mean_over_the_concatenated_batch(make_args):
    run = replay_model(make_args, "er", 0)
    batches = list(stream_batches(run, 2))
    run.model.observe(*batches[0])
    net_before = copy.deepcopy(run.model.net)
    buffer = run.model.buffer
    saved = buffer.generator.get_state(), run.augment_generator.get_state(), buffer.state_dict()
    loss = run.model.observe(*batches[1])
    buffer.generator.set_state(saved[0])
    run.augment_generator.set_state(saved[1])
    buffer.load_state_dict(saved[2])
    buf_x, buf_y = run.model.replay_batch()
    x, y, _ = batches[1]
    expected = nn.functional.cross_entropy(net_before(torch.cat((x, buf_x))), torch.cat((y, buf_y)))
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("masked", [0, 1])
def test_derpp_stores_pre_step_logits_unmasked_and_post_step_masked(make_args, masked):
    run = replay_model(make_args, "derpp", masked, buffer_size=50)
    (x, y, raw), = stream_batches(run, 1)
    before = copy.deepcopy(run.model.net)
    run.model.observe(x, y, raw)
    with torch.no_grad():
        pre, post = before(x), run.model.net(x)
    stored = run.model.buffer.fields["logits"][:5]
    assert not torch.allclose(pre, post, atol=1e-4), "the step must change the logits for the test to mean anything"
    assert torch.allclose(stored, pre if masked == 0 else post, atol=1e-5)


def test_explicit_flags_win_over_best_args(make_args):
    args = make_args("--dataset", "seq-mnist", "--model", "er", "--buffer_size", "200", "--load_best_args",
                     "--lr", "0.5")
    assert args.lr == 0.5 and args.minibatch_size == 10
