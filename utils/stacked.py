"""Many seeds of one configuration trained in one process as one stacked model (``--seeds 1-10``).

Why: a CL table is hundreds of small runs (batch 10 MLP, batch 32 ResNet-18)
whose steps are too small to keep a device busy: the time goes to launching
kernels and to Python, not to arithmetic.  Stacking S runs makes every kernel
do S runs' work for about the overhead of one.

How: the seed-folded layout.  Seed s's activation of shape (N, C, ...) lives
in channels ``s*C .. (s+1)*C - 1`` of one (N, S*C, ...) tensor, so every layer
without parameters (ReLU, pooling, flatten, residual additions, BasicBlock's
own ``forward``) runs unchanged on all seeds at once, and only layers with
parameters are replaced (``stack_network``):

* ``nn.Conv2d``  -> one grouped convolution (``groups`` times S);
* ``nn.BatchNorm*`` -> one batch norm over S*C channels: batch statistics and
  running statistics are per channel, hence per seed;
* ``nn.Linear`` (the MLP's layers, the FC head) -> batched matmuls whose
  forward and gradients are computed as ``F.linear`` computes them for one
  seed (``SeedLinear``), bitwise equal on the CPU;
* fixed heads (FNO, ETF, orth) -> a batched matmul with each seed's own
  matrix and learnable scale.

Losses are per seed (each seed's mean over its own samples), summed before
``backward``: each seed's slice of the gradient is then exactly its own
gradient, and plain SGD on the stacked parameters is each seed's own update.

Each seed keeps every random stream of the single run with that seed: its
``Run`` is built by ``utils.training.build_run`` (initial weights, FNO
partition, data order, augmentation and buffer generators), the stacked
trainer draws from those generators with the same calls in the same order,
and after every task the stacked state is copied back into the seeds' own
networks and buffers, which are then evaluated, checkpointed and reported by
the single run's own functions.  The replay buffers are one stacked tensor
per field; the draws and counters stay in each seed's ``ReservoirBuffer``.

Supported: the methods of ``STEPS``, the heads of ``HEADS`` and the
backbones of ``BACKBONES``; anything else is refused in one line
(``check_stackable``).  See docs/stacked.md for the measurements.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbone.heads import FixedHead
from models.continual_model import backward_terms
from utils.buffer import _BIG, ReservoirBuffer
from utils.errors import UserError
from utils.losses import mask_other_tasks

MAX_SEEDS = 1024
HEADS = ("fc", "fno", "etf", "orth")
BACKBONES = ("mlp", "resnet18", "resnet18-narrow")  # the ones whose forward only folds seeds into channels


# ----------------------------------------------------------------------------- the command line

def parse_seeds(text: str) -> list:
    """``--seeds``: ``1-10`` (both ends included), ``1,4,7`` or a mix (``1-3,7``); distinct seeds, in order."""
    seeds = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"expected seeds such as 1-10 or 1,4,7, got {text!r}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise argparse.ArgumentTypeError(f"the range {part.strip()!r} ends before it starts")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds in one process, got more in {text!r}")
        seeds += range(first, last + 1)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"seed {repeated[0]} is given twice in {text!r}")
    return seeds


def for_seed(template: Optional[str], seed: int) -> Optional[str]:
    """``template`` with ``{seed}`` replaced by ``seed`` (plain replacement: other braces stay as they are)."""
    return None if template is None else template.replace("{seed}", str(seed))


def results_template(results_dir: str, explicit: dict, seeds: list) -> str:
    """A ``--results_file`` template with ``{seed}`` that names each seed's file under ``--results_dir``
    exactly as the single run ``--seed s`` with the same explicit flags (and the grid runner) names it;
    ``ValueError`` when the names are shortened with a hash, which no template can reproduce."""
    from utils.flags import results_name
    flags = {k: v for k, v in explicit.items() if k not in ("seeds", "seed")}
    first = results_name({**flags, "seed": seeds[0]})
    template = ",".join("seed={seed}" if pair == f"seed={seeds[0]}" else pair for pair in first.split(","))
    path = os.path.join(results_dir, template + ".json")
    for seed in seeds:
        if for_seed(path, seed) != os.path.join(results_dir, results_name({**flags, "seed": seed}) + ".json"):
            raise ValueError("--results_dir with --seeds: these flags give results names shortened with a hash; "
                             "give --results_file with {seed} in it instead")
    return path


def seed_args(args, seed: int):
    """The arguments of the single run with ``seed``: ``--seed``, ``{seed}`` filled in ``--results_file``,
    and its own checkpoint directory (``{seed}`` filled in, else ``DIR/seed-S``)."""
    values = dict(vars(args), seed=seed, results_file=for_seed(args.results_file, seed))
    if "seeds" in values:
        values["seeds"] = None  # as in a single run
    if args.checkpoint_dir:
        values["checkpoint_dir"] = (for_seed(args.checkpoint_dir, seed) if "{seed}" in args.checkpoint_dir
                                    else os.path.join(args.checkpoint_dir, f"seed-{seed}"))
    return argparse.Namespace(**values)


def check_stackable(args, seeds: list) -> None:
    """Refuse, in one line, what the stacked trainer does not do (before anything is built)."""
    from utils.wandb_logger import wandb_wanted
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 1-10")
    if args.model not in STEPS:
        raise UserError(f"--seeds: method {args.model} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(sorted(STEPS))})")
    from models import get_model_class
    from models.continual_model import ContinualModel
    method = get_model_class(args.model)
    if (method.build_optimizer, method.build_scheduler) != (ContinualModel.build_optimizer,
                                                            ContinualModel.build_scheduler):
        raise UserError(f"--seeds: method {args.model} builds its own optimizer or scheduler, which the stacked "
                        f"trainer does not mirror yet; run one process per seed")
    if args.classifier not in HEADS:
        raise UserError(f"--seeds: head {args.classifier} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(HEADS)})")
    if args.backbone not in BACKBONES:
        raise UserError(f"--seeds: backbone {args.backbone} does not support stacked runs yet; run one process per "
                        f"seed (stacked: {', '.join(BACKBONES)})")
    refusals = [
        (args.compile, "--compile is not supported with stacked runs yet (the stacked step is one larger graph, "
                       "not yet measured); use --compile 0"),
        (wandb_wanted(args), "wandb logs one run per process; use --nowand 1 (each seed's results file "
                             "holds everything) or one process per seed"),
        (getattr(args, "eval_every", None), "--eval_every evaluates in the middle of a task, which a stacked "
                                            "task does not stop for; run one process per seed"),
        (len(seeds) > 1 and args.results_file and "{seed}" not in args.results_file,
         f"--results_file {args.results_file} would hold every seed's results; put {{seed}} in its name"),
    ]
    for refused, why in refusals:
        if refused:
            raise UserError(f"--seeds: {why}")


# ----------------------------------------------------------------------------- stacked layers

class SeedLinear(torch.autograd.Function):
    """S linear maps at once: x (S, N, in), weight (S, out, in), bias (S, out) or None -> (S, N, out).

    The forward is ``addmm(bias, x, weight.t())`` per seed and the gradients are those autograd takes
    for ``F.linear`` (weight: grad^T @ x, in the weight's own layout; bias: grad summed over N), so on
    the CPU each seed's numbers are bitwise its single run's.  (Autograd's own derivative of ``bmm``
    would give the weight gradient transposed, and copying it back costs as much as the matmul.)
    The weight's gradient is accumulated in place, ``grad += grad_out^T @ x`` in one ``baddbmm``
    (bitwise the ``grad + new`` autograd computes), not through a weight-sized temporary: the stacked
    first layer of the MLP is the largest tensor a step touches, and methods with several passes
    (ER, DER++) accumulate into it.  ``weight`` must be a leaf parameter.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x)
        ctx.weight = weight  # the parameter itself, whose .grad the backward accumulates into
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        (x,), weight = ctx.saved_tensors, ctx.weight
        grad = grad.contiguous()  # arrives seed-folded (a transposed view); single runs reduce a contiguous one
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            if weight.grad is None:
                weight.grad = torch.bmm(grad.transpose(1, 2), x)
            else:
                weight.grad.baddbmm_(grad.transpose(1, 2), x)
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


def seed_linear(x, weight, bias):
    if torch.is_autocast_enabled(x.device.type):  # autocast casts inside bmm: let autograd follow the casts
        out = torch.bmm(x, weight.transpose(1, 2))
        return out if bias is None else out + bias.unsqueeze(1).to(out.dtype)
    return SeedLinear.apply(x, weight, bias)


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: a gradient that arrives seed-folded (a
    transposed view) would be reduced in another order than a single run reduces it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _stack(tensors, how=torch.stack):
    """Stacked copies of tensors (parameters or buffers) as a new leaf that keeps their requires_grad."""
    stacked = how([t.detach() for t in tensors])
    return nn.Parameter(stacked, requires_grad=tensors[0].requires_grad) if isinstance(tensors[0], nn.Parameter) \
        else stacked


class StackedLinear(nn.Module):
    """S ``nn.Linear`` layers on seed-folded features: (N, S*in) -> (N, S*out)."""

    def __init__(self, layers: list):
        super().__init__()
        self.weight = _stack([layer.weight for layer in layers])
        self.bias = None if layers[0].bias is None else _stack([layer.bias for layer in layers])

    def forward(self, x):
        n, seeds = x.shape[0], self.weight.shape[0]
        out = seed_linear(x.view(n, seeds, -1).transpose(0, 1), self.weight, self.bias)
        return out.transpose(0, 1).reshape(n, -1)

    def unstack(self, layers: list) -> None:
        for s, layer in enumerate(layers):
            layer.weight.copy_(self.weight[s])
            if layer.bias is not None:
                layer.bias.copy_(self.bias[s])


class StackedConv2d(nn.Module):
    """S ``nn.Conv2d`` layers as one grouped convolution on seed-folded channels."""

    def __init__(self, convs: list):
        super().__init__()
        conv = convs[0]
        if conv.padding_mode != "zeros":
            raise UserError(f"--seeds: convolutions with padding_mode {conv.padding_mode!r} do not stack yet")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups * len(convs)
        self.weight = _stack([c.weight for c in convs], torch.cat)
        self.bias = None if conv.bias is None else _stack([c.bias for c in convs], torch.cat)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def unstack(self, convs: list) -> None:
        for conv, weight in zip(convs, self.weight.chunk(len(convs))):
            conv.weight.copy_(weight)
        if self.bias is not None:
            for conv, bias in zip(convs, self.bias.chunk(len(convs))):
                conv.bias.copy_(bias)


class StackedBatchNorm(nn.Module):
    """S batch norms as one over S*C channels: statistics are per channel, so per seed."""

    def __init__(self, norms: list):
        super().__init__()
        norm = norms[0]
        counts = {int(n.num_batches_tracked) for n in norms if n.num_batches_tracked is not None}
        if len(counts) > 1:
            raise ValueError(f"batch norms to stack have seen different numbers of batches: {sorted(counts)}")
        device = next(iter(list(norm.parameters()) + list(norm.buffers()))).device
        self.norm = type(norm)(norm.num_features * len(norms), eps=norm.eps, momentum=norm.momentum,
                               affine=norm.affine, track_running_stats=norm.track_running_stats, device=device)
        with torch.no_grad():
            for name, tensor in list(self.norm.named_parameters()) + list(self.norm.named_buffers()):
                if name != "num_batches_tracked":
                    tensor.copy_(torch.cat([getattr(n, name) for n in norms]))
                else:
                    tensor.copy_(norm.num_batches_tracked)

    def forward(self, x):
        return self.norm(x)

    def unstack(self, norms: list) -> None:
        for name, tensor in list(self.norm.named_parameters()) + list(self.norm.named_buffers()):
            for norm, part in zip(norms, [tensor] * len(norms) if name == "num_batches_tracked"
                                  else tensor.chunk(len(norms))):
                getattr(norm, name).copy_(part)


class StackedFixedHead(nn.Module):
    """S fixed heads (``FixedHead``: logits = s * W h), each seed with its own matrix W and scale s."""

    def __init__(self, heads: list):
        super().__init__()
        self.register_buffer("weight", torch.stack([h.weight for h in heads]))  # (S, K, D)
        scale = _stack([h.scale for h in heads])
        if isinstance(scale, nn.Parameter):
            self.scale = scale
        else:
            self.register_buffer("scale", scale)

    def forward(self, h):
        n, seeds = h.shape[0], self.weight.shape[0]
        logits = torch.bmm(h.view(n, seeds, -1).transpose(0, 1), self.weight.transpose(1, 2))  # (S, N, K)
        return ContiguousGrad.apply(self.scale.view(seeds, 1, 1) * logits).transpose(0, 1).reshape(n, -1)

    def unstack(self, heads: list) -> None:
        for s, head in enumerate(heads):
            head.weight.copy_(self.weight[s])
            head.scale.copy_(self.scale[s])


STACKED_LAYERS = ((nn.Linear, StackedLinear), (nn.Conv2d, StackedConv2d), (_BatchNorm, StackedBatchNorm),
                  (FixedHead, StackedFixedHead))
STACKED_TYPES = tuple(stacked for _, stacked in STACKED_LAYERS)


def stack_network(nets: list) -> nn.Module:
    """One module computing every net of ``nets`` (same architecture) on seed-folded inputs.

    A copy of the first net whose layers with parameters are replaced by their
    stacked forms; the layers without parameters keep their own code."""
    stacked = copy.deepcopy(nets[0])
    for name, module in list(stacked.named_modules()):
        kind = next((new for old, new in STACKED_LAYERS if isinstance(module, old)), None)
        if kind is not None:
            stacked.set_submodule(name, kind([net.get_submodule(name) for net in nets]))
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise UserError(f"--seeds: layer {name} ({type(module).__name__}) has no stacked form yet; "
                            f"run one process per seed")
    return stacked


@torch.no_grad()
def unstack_network(stacked: nn.Module, nets: list) -> None:
    """Copy every seed's slice of ``stacked`` back into its own net."""
    for name, module in stacked.named_modules():
        if isinstance(module, STACKED_TYPES):
            module.unstack([net.get_submodule(name) for net in nets])


class SeedStack(nn.Module):
    """S networks as one: inputs (N, S, ...) -> logits (N, S, K), seeds folded into channels inside."""

    def __init__(self, nets: list):
        super().__init__()
        self.net = stack_network(nets)

    def forward(self, x):
        n, seeds = x.shape[:2]
        return self.net(x.reshape(n, seeds * x.shape[2], *x.shape[3:])).view(n, seeds, -1)


# ----------------------------------------------------------------------------- per-seed losses

def seed_cross_entropy(logits, labels):
    """Each seed's ``F.cross_entropy`` (mean over its N samples): logits (N, S, K), labels (N, S) -> (S,).

    Row-wise log-softmax, then sum / N: the gradient is the single run's bitwise
    (-(g / N) at the label), the value can differ from it in the last bit."""
    n = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(n, -1).sum(0) / n


def seed_masked_cross_entropy(logits, labels, task_of_class):
    """Each seed's ``masked_cross_entropy``: logits outside each sample's task are -inf."""
    masked = mask_other_tasks(logits.flatten(0, 1), labels.flatten(), task_of_class)
    return seed_cross_entropy(masked.view(logits.shape), labels)


class SeedMSE(torch.autograd.Function):
    """Each seed's ``F.mse_loss`` (mean over its N x K entries): x, y (N, S, K) -> (S,).

    The backward is ATen's ``mse_loss_backward``, (2 / numel) * (x - y) * grad, per seed, so the
    gradient is the single run's bitwise (autograd of a hand-written mean would round differently)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        # Each seed's N x K squared errors contiguous, as the single run reduces them.
        return (x - y).square().transpose(0, 1).reshape(x.shape[1], -1).mean(1)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        norm = 2.0 / (x.shape[0] * x.shape[2])
        return norm * (x - y) * grad.view(1, -1, 1), None


def seed_mse(x, y):
    if torch.is_autocast_enabled(x.device.type):
        return (x.float() - y).square().mean(dim=(0, 2))
    return SeedMSE.apply(x, y)


# ----------------------------------------------------------------------------- stacked buffer

def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` for an index into dim 0, as whole-row copies (``index_select``): the elementwise
    kernel of advanced indexing is several times slower on stacked uint8 images."""
    return tensor.index_select(0, index.flatten()).view(*index.shape, *tensor.shape[1:])


class StackedBuffer:
    """The seeds' reservoir buffers with each field as one (size + 1, S, ...) tensor: one gather per draw.

    Every random draw comes from the seed's own ``ReservoirBuffer`` generator
    with the call its single run makes (``randperm`` to sample, ``randint`` to
    insert); what is computed from the draws is vectorised over the seeds
    (``reservoir_slots`` is ``ReservoirBuffer.reservoir_slots`` with a seed
    column), so each seed stores and replays exactly what its single run does.
    The seeds' counters stay in their own buffers."""

    def __init__(self, buffers: list):
        if any(type(b) is not ReservoirBuffer for b in buffers):
            raise UserError("--seeds: only the reservoir buffer stacks yet; run one process per seed")
        if len({b.num_seen for b in buffers}) > 1:
            raise ValueError("buffers to stack have seen different numbers of samples")
        self.buffers = buffers
        self.size, self.device = buffers[0].size, buffers[0].device
        self.seeds = torch.arange(len(buffers), device=self.device)
        self.fields = {name: torch.stack([b.fields[name] for b in buffers], 1) for name in buffers[0].fields}

    def is_empty(self) -> bool:
        return self.buffers[0].is_empty()

    def sample(self, k: int, *names: str):
        """Each seed's own draw of min(k, len) entries; the named fields as (k, S, ...) tensors."""
        n = len(self.buffers[0])
        idx = torch.stack([torch.randperm(n, device=self.device, generator=b.generator) for b in self.buffers], 1)[:k]
        rows = idx * len(self.buffers) + self.seeds  # into the fields with slot and seed flattened together
        return tuple(gather_rows(self.fields[name].flatten(0, 1), rows) for name in names)

    def reservoir_slots(self, batch: int) -> torch.Tensor:
        """(batch, S) slots for the next stream samples of every seed; ``size`` means 'not stored'."""
        size, device = self.size, self.device
        n = (self.buffers[0].num_seen + torch.arange(batch, device=device)).unsqueeze(1)
        draw = torch.stack([torch.randint(0, _BIG, (batch,), device=device, generator=b.generator)
                            for b in self.buffers], 1) % (n + 1)
        slot = torch.where(n < size, n, draw)
        slot = torch.where(slot < size, slot, size)
        # Last writer wins within each seed's column, as sequential insertion would have it.
        position = torch.arange(batch, device=device).unsqueeze(1).expand_as(slot)
        last = torch.full((size + 1, len(self.buffers)), -1, dtype=torch.long, device=device)
        last.scatter_reduce_(0, slot, position, reduce="amax")
        return torch.where(last.gather(0, slot) == position, slot, size)

    @torch.no_grad()
    def add(self, **tensors: torch.Tensor) -> None:
        """Offer a stacked batch (N, S, ...) per field; each seed's samples go to its own reservoir slots."""
        batch = len(next(iter(tensors.values())))
        for name, value in tensors.items():
            if name not in self.fields:
                self.fields[name] = torch.zeros((self.size + 1,) + tuple(value.shape[1:]), dtype=value.dtype,
                                                device=self.device)
        rows = (self.reservoir_slots(batch) * len(self.buffers) + self.seeds).flatten()
        for name, value in tensors.items():
            field = self.fields[name].flatten(0, 1)  # a view: written in place
            # Whole rows (index_copy_); only sink rows can be written twice, and nothing reads them.
            field.index_copy_(0, rows, value.detach().to(field.dtype).flatten(0, 1))
        for b in self.buffers:
            b.num_seen += batch

    def unstack(self) -> None:
        for s, b in enumerate(self.buffers):
            b.fields = {name: field[:, s].clone() for name, field in self.fields.items()}


# ----------------------------------------------------------------------------- stacked methods

class Stack:
    """What a stacked step works on: the stacked network, its optimizer and scheduler (the method's plain
    SGD), the stacked buffer, and each seed's augmentation stream."""

    def __init__(self, runs: list):
        model = runs[0].model
        self.runs, self.args, self.setting = runs, model.args, model.setting
        self.net = SeedStack([run.model.net for run in runs]).train()
        if self.args.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.args.lr)  # holds the lr the scheduler sets
        self.scheduler = model.build_scheduler(self.opt)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.batch_norm = bool(model.bn_layers)
        self.buffer = None if model.buffer is None else StackedBuffer([run.model.buffer for run in runs])
        self.autocast = model.autocast
        self.transform = runs[0].transform
        # One gather for every seed when they share their training data (the usual case).
        self.shared_x = all(run.train.x is runs[0].train.x for run in runs)
        self.shared_y = all(run.train.y is runs[0].train.y for run in runs)

    def gather(self, batch: torch.Tensor) -> tuple:
        """Raw inputs (N, S, ...) and labels (N, S) of ``batch`` (N, S): column s indexes seed s's data."""
        runs = self.runs
        x = gather_rows(runs[0].train.x, batch) if self.shared_x else \
            torch.stack([run.train.x[batch[:, s]] for s, run in enumerate(runs)], 1)
        y = runs[0].train.y[batch] if self.shared_y else \
            torch.stack([run.train.y[batch[:, s]] for s, run in enumerate(runs)], 1)
        return x, y

    def augment(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, S, ...) -> network inputs, each seed's drawn from its own augmentation stream."""
        if not self.transform.augments:  # scaling and normalisation only: elementwise, nothing drawn
            return self.transform.train(raw)
        return torch.stack([run.transform.train(raw[:, s], run.augment_generator)
                            for s, run in enumerate(self.runs)], 1)

    def stream_loss(self, logits, labels):
        if self.args.masked_softmax:
            return seed_masked_cross_entropy(logits, labels, self.setting.task_of_class)
        return seed_cross_entropy(logits, labels)

    def backward(self, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``ContinualModel.backward`` for S seeds: the per-seed terms (S,) summed and backpropagated at once."""
        with self.autocast():
            term = compute_loss()
        term.sum().backward()
        return term.detach()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """The method's plain SGD step (``check_stackable`` refuses any other optimizer), ``p -= lr * grad``
        with the optimizer's own kernel, without ``torch.optim``'s per-step bookkeeping, which a stacked MLP
        step notices (about 0.1 ms of 3)."""
        lr = self.opt.param_groups[0]["lr"]
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)

    def backward_terms(self, terms: list) -> torch.Tensor:
        """``ContinualModel.backward_terms`` for S seeds: per-seed terms, passes merged without batch norm."""
        return backward_terms(self.net, terms, self.backward, self.batch_norm)

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def unstack(self) -> None:
        unstack_network(self.net.net, [run.model.net for run in self.runs])
        if self.buffer is not None:
            self.buffer.unstack()


def sgd_step(st: Stack, inputs, labels, raw):
    """models/sgd.py's ``observe``."""
    st.zero_grad()
    loss = st.backward(lambda: st.stream_loss(st.net(inputs), labels))
    st.step()
    return loss


def er_step(st: Stack, inputs, labels, raw):
    """models/er.py's ``observe``: masked, stream and replay terms (``backward_terms``); unmasked, one pass
    over both with one cross-entropy."""
    args, buffer = st.args, st.buffer
    st.zero_grad()
    if args.masked_softmax:
        terms = [(inputs, lambda out: st.stream_loss(out, labels))]
        if not buffer.is_empty():
            buf_x, buf_y = buffer.sample(args.minibatch_size, "examples", "labels")
            terms.append((st.augment(buf_x), lambda out: seed_cross_entropy(out, buf_y)))
        loss = st.backward_terms(terms)
    else:
        x, y = inputs, labels
        if not buffer.is_empty():
            buf_x, buf_y = buffer.sample(args.minibatch_size, "examples", "labels")
            x, y = torch.cat((inputs, st.augment(buf_x))), torch.cat((labels, buf_y))
        loss = st.backward(lambda: seed_cross_entropy(st.net(x), y))
    st.step()
    buffer.add(examples=raw, labels=labels)
    return loss


def derpp_step(st: Stack, inputs, labels, raw, beta: Optional[float] = None):
    """models/derpp.py's ``observe`` (``beta`` 0: models/der.py's): masked, the stored logits come from a
    forward pass after the step; unmasked, from the step's own stream pass."""
    args, buffer, mb = st.args, st.buffer, st.args.minibatch_size
    beta = args.beta if beta is None else beta
    stream_logits = []

    def stream_term(logits):
        stream_logits.append(logits.detach().float())
        return st.stream_loss(logits, labels)

    st.zero_grad()
    terms = [(inputs, stream_term)]
    if not buffer.is_empty():
        buf_x, buf_logits = buffer.sample(mb, "examples", "logits")
        terms.append((st.augment(buf_x), lambda out: args.alpha * seed_mse(out, buf_logits)))
        if beta:
            buf_x2, buf_y = buffer.sample(mb, "examples", "labels")
            terms.append((st.augment(buf_x2), lambda out: beta * seed_cross_entropy(out, buf_y)))
    loss = st.backward_terms(terms)
    st.step()
    if args.masked_softmax:
        with torch.no_grad(), st.autocast():
            stream_logits[0] = st.net(inputs).float()
    buffer.add(examples=raw, labels=labels, logits=stream_logits[0])
    return loss


def der_step(st: Stack, inputs, labels, raw):
    return derpp_step(st, inputs, labels, raw, beta=0.0)


# The methods that stack: registered name -> its ``observe`` for S seeds.  A method not listed here
# refuses --seeds (its own observe would need a stacked form first).
STEPS = {"sgd": sgd_step, "er": er_step, "derpp": derpp_step, "der": der_step}


# ----------------------------------------------------------------------------- the trainer

class _MeanLoss:
    """The seeds' mean loss, computed only when the progress bar reads it (no device work per step)."""

    def __init__(self, losses: torch.Tensor):
        self.losses = losses

    def __float__(self) -> float:
        return float(self.losses.float().mean())


def shared_dataset(args):
    """The benchmark read once, its splits moved to the device and given their tasks once
    (``to_device``, which a domain benchmark uses to make all its domains): every seed's ``build_run``
    then works on the same tensors (64 copies of TinyImageNet would not fit on a GPU)."""
    from datasets import get_dataset_class
    dataset = get_dataset_class(args.dataset)(args.data_path, rebuild_cache=bool(args.rebuild_cache))
    splits = tuple(split.to(torch.device(args.device)) for split in dataset.load_splits())
    on_device, to_device = {}, dataset.to_device

    def to_device_once(split, device):
        key = (id(split), str(device))  # the splits above live as long as the dataset: ids stay theirs
        if key not in on_device:
            on_device[key] = to_device(split, device)
        return on_device[key]

    # This object only (an instance attribute): build_run asks it for the splits and their device copies.
    dataset.load_splits, dataset.to_device = (lambda: splits), to_device_once
    return dataset


def train_stacked_stage(runs: list, datas: list, progress=None, step_hook=None, first_step: int = 0) -> tuple:
    """``utils.training.train_stage`` for S seeds at once: each seed's ``prepare_task`` and ``begin_task``,
    the epochs of the stacked step, then each seed's state copied back, its loss checked and ``end_task``.

    Returns each seed's last loss (floats) and the number of optimizer steps taken."""
    from utils.guards import check_finite_loss
    from utils.training import epoch_batches, steps_per_epoch
    args, task = runs[0].args, datas[0].task
    if len({len(d) for d in datas}) > 1:
        raise ValueError(f"seeds to stack have task {task + 1} training sets of different sizes")
    for run, data in zip(runs, datas):
        run.model.train()
        run.model.prepare_task(task)
        run.model.begin_task(task, data)
    st = Stack(runs)
    step_fn = STEPS[args.model]
    total = steps_per_epoch(runs[0], datas[0]) * args.n_epochs
    if getattr(args, "max_steps_per_task", None) is not None:
        total = min(total, args.max_steps_per_task)
    label = f"Task {task + 1}/{runs[0].dataset.N_TASKS} ({len(runs)} seeds)"
    device = datas[0].y.device
    losses = torch.zeros(len(runs))
    step = 0
    for epoch in range(args.n_epochs):
        orders = torch.stack([data.indices[torch.randperm(len(data), device=device, generator=run.data_generator)]
                              for run, data in zip(runs, datas)], 1)
        for batch in epoch_batches(orders, args.batch_size, runs[0].min_batch)[:total - step]:
            raw, labels = st.gather(batch)
            losses = step_fn(st, st.augment(raw), labels, raw)
            step += 1
            if progress is not None:
                progress.update(label, step, total, _MeanLoss(losses))
            if step_hook is not None:
                step_hook(task, step, losses)
        st.end_epoch()
        for run in runs:
            run.model.end_epoch()
        if step == total:
            break
    if progress is not None:
        progress.close()
    st.unstack()
    lasts = losses.tolist()
    for run, data, last in zip(runs, datas, lasts):
        check_finite_loss(last, f"seed {run.args.seed}, task {task + 1} (steps {first_step + 1}-"
                                f"{first_step + total})", args.lr)
        run.model.end_task(task, data)
    return lasts, total


def finish_stage(run, data, stage: int, plan: list, history: dict, last_loss: float, log) -> None:
    """After a stage's training, what ``utils.training.run_experiment`` records for one run: its
    evaluations (test, validation, next task), the history and the task's log line."""
    from utils.training import evaluate, task_line
    cil, til = evaluate(run, data.task + 1)
    history["rows_cil"].append(cil)
    history["rows_til"].append(cil if til is None else til)
    if run.validation is not None:
        cil, til = evaluate(run, data.task + 1, run.validation)
        history["val_rows_cil"].append(cil)
        history["val_rows_til"].append(cil if til is None else til)
    if len(plan) > 1 and stage + 1 < len(plan):
        cil, til = evaluate(run, data.task + 2, first_task=data.task + 1)
        history["next_cil"].append(cil[0])
        history["next_til"].append(None if til is None else til[0])
    history["stages_done"] = stage + 1
    log(task_line(run, data.task, history, last_loss))


def run_seeds_and_write(args, headline: Callable[[object, dict], str]) -> None:
    """``main.py --seeds``: every seed's outputs checked and locked (``utils.entry``, ``utils.runlock``)
    before the stacked run, then every seed's headline printed and results file written as its single
    run writes them.  Returns ``None``: nothing is left for the entry point to write."""
    from utils.entry import check_outputs, save_results
    from utils.runlock import run_lock
    check_stackable(args, args.seeds)
    per_seed = [seed_args(args, seed) for seed in args.seeds]
    for one in per_seed:
        check_outputs(one)
    with run_lock(*[place for one in per_seed for place in (one.results_file, one.checkpoint_dir)]):
        for one, results in zip(per_seed, run_stacked(args, args.seeds)):
            print(f"seed {one.seed}: {headline(one, results)}", flush=True)
            if one.results_file:
                save_results(one, results)
                print(f"Results written to {os.path.abspath(one.results_file)}", flush=True)


def run_stacked(args, seeds: list, log=print, progress=None, step_hook=None) -> List[dict]:
    """Train and evaluate the runs of ``args`` with each of ``seeds`` as one stacked model; return, per
    seed, the results dictionary ``utils.training.run_experiment`` returns for that seed.

    ``step_hook(task, step, losses)`` sees each step's per-seed losses (a detached (S,) tensor).  With
    ``--checkpoint_dir`` each seed keeps a single run's checkpoint in its own directory (``seed_args``)
    and continues from it; seeds that are at different tasks train together from where each one is.
    ``train_time_s`` and ``wall_time_s`` are those of the whole stacked run, shared by its seeds.
    """
    from utils.callbacks import standard_callbacks
    from utils.checkpoint import signals_held
    from utils.progress import ProgressBar
    from utils.provenance import provenance
    from utils.training import build_run, evaluate, make_results, resume, stages, steps_per_epoch
    from utils.wandb_logger import WandbLogger
    seeds = list(seeds)
    check_stackable(args, seeds)
    start = time.perf_counter()
    origin = provenance()
    dataset = shared_dataset(args)
    runs = [build_run(seed_args(args, seed), dataset) for seed in seeds]
    logs = [lambda line, seed=seed: log(f"seed {seed}: {line}") for seed in seeds]
    saved = [resume(run, seed_log) for run, seed_log in zip(runs, logs)]
    histories = [history for history, _ in saved]
    loggers = [WandbLogger(run.args, state) for run, (_, state) in zip(runs, saved)]
    hooks = [standard_callbacks(run.args, ProgressBar(enabled=False), seed_log, logger, history["stages_done"])
             for run, seed_log, logger, history in zip(runs, logs, loggers, histories)]
    elapsed_before = [history["wall_time_s"] for history in histories]
    plans = [stages(run)[:args.n_tasks] for run in runs]
    bar = progress or ProgressBar()
    results, exit_code = None, 1
    try:
        for run, plan, history in zip(runs, plans, histories):
            if len(plan) > 1 and history["stages_done"] == 0:
                history["random_init_cil"], history["random_init_til"] = evaluate(run, len(plan))
        for stage in range(len(plans[0])):
            todo = [i for i, history in enumerate(histories) if history["stages_done"] <= stage]
            if not todo:
                continue
            tic = time.perf_counter()
            bar.start(steps_per_epoch(runs[todo[0]], plans[todo[0]][stage]), args.n_epochs)
            lasts, steps = train_stacked_stage([runs[i] for i in todo], [plans[i][stage] for i in todo], bar,
                                               step_hook, histories[todo[0]]["n_steps"])
            train_s = time.perf_counter() - tic
            with signals_held():  # every seed's checkpoint of this task is written, or none is interrupted
                for i, last in zip(todo, lasts):
                    history = histories[i]
                    history["train_time_s"] += train_s
                    history["n_steps"] += steps
                    finish_stage(runs[i], plans[i][stage], stage, plans[i], history, last, logs[i])
                    history["wall_time_s"] = elapsed_before[i] + time.perf_counter() - start
                    for hook in hooks[i]:
                        hook.on_task_end(runs[i], plans[i][stage].task, history)
        wall = time.perf_counter() - start
        results = [make_results(run, history, before + wall, origin)
                   for run, history, before in zip(runs, histories, elapsed_before)]
        exit_code = 0
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        for i, run in enumerate(runs):
            for hook in hooks[i]:
                hook.on_run_end(run, None if results is None else results[i], exit_code)
    return results
