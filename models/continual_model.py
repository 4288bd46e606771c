"""The base class of every continual-learning method."""
from __future__ import annotations

import collections
import functools
import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from backbone.heads import build_network
from utils.amp import autocast as amp_autocast
from utils.buffer import ReservoirBuffer
from utils.losses import kept_cross_entropy, mask_other_tasks, present_classes


@dataclass
class Setting:
    """What a method may know about the run besides its hyper-parameters: its only window on the run
    (methods never look up the dataset registry or the trainer)."""
    device: torch.device
    task_of_class: torch.Tensor           # class -> task, on ``device``
    augment: Callable[[torch.Tensor], torch.Tensor]  # raw inputs -> augmented network inputs
    buffer_generator: torch.Generator     # every buffer draw comes from here
    lr_milestones: tuple = ()             # the dataset's schedule: epochs at which the lr is multiplied
    lr_gamma: float = 0.1                 # by this factor (none: a constant lr, the protocol's default)
    n_tasks: int = 1                      # the benchmark's tasks (task_of_class cannot tell it on domain-IL)
    input_shape: tuple = ()               # one input's shape, as the dataset stores it
    domain_il: bool = False               # every task holds every class, the tasks differ in their inputs
    transform: object = None              # the dataset's DeviceTransform, its constants on ``device``
    eval_batch_size: int = 1024           # inputs per forward pass when evaluating (bounded in pixels)

    @property
    def num_classes(self) -> int:
        return len(self.task_of_class)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


def batch_norm_layers(net: nn.Module) -> list:
    """The batch-norm layers of ``net`` (the same objects once ``--compile`` wraps it)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def backward_terms(net: nn.Module, terms: list, backward: Callable, batch_norm: bool) -> torch.Tensor:
    """Backpropagate the sum of loss terms that each need a forward pass of ``net``, with one backward pass;
    return the sum, detached.

    ``terms`` is a list of ``(inputs, loss_of)`` pairs, ``loss_of(outputs)`` giving the term;
    ``backward(compute_loss)`` computes one loss (under autocast) and backpropagates it.  With batch
    norm (``batch_norm``) every term has its own forward pass, as the reference methods compute
    them (each pass is its own batch for the statistics); the terms are summed and backpropagated
    once (the gradients of the sum are the sum of the terms' gradients, up to float rounding), so a
    step is one forward graph per term and one backward, as CUDA graphs (``--compile
    reduce-overhead``) require; every pass's activations are held until the backward.  Without batch
    norm a sample's outputs do not depend on the rest of its batch: one forward pass over every
    term's inputs gives the same loss and gradients, up to float rounding, in half (ER) or a third
    (DER++) of the operations.  The one mechanism both trainers use (``ContinualModel`` and
    ``utils.stacked.method.Stack``), so a stacked seed computes its single run's step.
    """
    if batch_norm or len(terms) == 1:
        def summed():
            return functools.reduce(operator.add, [loss_of(net(x)) for x, loss_of in terms])
    else:
        sizes = [len(x) for x, _ in terms]

        def summed():
            outs = net(torch.cat([x for x, _ in terms])).split(sizes)
            return functools.reduce(operator.add, [loss_of(out) for out, (_, loss_of) in zip(outs, terms)])
    return backward(summed)


class PlainSGD:
    """Plain SGD (no momentum, no weight decay), the protocol's optimizer: ``p -= lr * grad`` with one ``add_``
    per parameter, the kernel ``torch.optim.SGD`` runs for it (the same numbers), without its per-step
    bookkeeping (profiler records and hooks: about a tenth of a batch-10 MLP step on the CPU).  The learning
    rate lives in ``holder``, a ``torch.optim.SGD`` over the same parameters that schedulers step and
    checkpoints save.  The stacked trainer steps its stacked parameters with it too."""

    def __init__(self, params, lr: float):
        self.holder = torch.optim.SGD(params, lr=lr)
        self.params = [p for group in self.holder.param_groups for p in group["params"] if p.requires_grad]

    @property
    def param_groups(self) -> list:
        return self.holder.param_groups

    def state_dict(self) -> dict:
        return self.holder.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.holder.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.holder.param_groups[0]["lr"]
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


class MultiStepSchedule:
    """The protocol's step schedule: after each epoch, the learning rate of every group of ``opt`` is multiplied by
    ``gamma`` once for each milestone the epoch count reaches (the rule and the numbers of torch's MultiStepLR,
    which also warns when its optimizer is not a stepping ``torch.optim`` one, as ``PlainSGD`` is not).
    Its state is the epoch count (a checkpoint of torch's MultiStepLR holds it too, as ``last_epoch``)."""

    def __init__(self, opt, milestones, gamma: float):
        self.opt, self.milestones, self.gamma, self.last_epoch = opt, collections.Counter(milestones), gamma, 0

    def step(self) -> None:
        self.last_epoch += 1
        if self.last_epoch in self.milestones:
            for group in self.opt.param_groups:
                group["lr"] = group["lr"] * self.gamma ** self.milestones[self.last_epoch]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])


class ContinualModel(nn.Module):
    """A method: ``observe`` one stream batch, optionally ``begin_task`` / ``end_task``.

    The trainer owns the loop, evaluation and logging.  The method owns its
    optimisation: before every task the trainer calls ``prepare_task``, which
    builds a fresh optimizer and scheduler with ``build_optimizer`` /
    ``build_scheduler`` (override either), and ``end_epoch`` steps the
    scheduler.  ``begin_task(task, data)`` and ``end_task(task, data)`` see the
    task's training split (``utils.training.TaskData``), so methods that
    regularise, distil or select exemplars need no trainer changes.  Methods
    never branch on the head: ``stream_loss`` applies the masked softmax when
    it is on, and replay terms use plain unmasked losses over all classes.
    """

    NAME: str = ""
    USES_BUFFER: bool = False   # rehearsal methods need --buffer_size > 0
    JOINT: bool = False         # trained once on all tasks together (the upper bound)
    USES_LR: bool = True        # takes its steps with --lr (required); False: the method has its own rates
    DEFAULT_LR: float = 0.0     # > 0: --lr when neither the command line nor --load_best_args gives one
    FLAGS: dict = {}            # the method's own flags: name -> utils.cli.Flag (collected by the parser)
    # --load_best_args: dataset -> buffer size (0 for methods without a buffer) -> flags; name the source.
    BEST_ARGS: dict = {}
    # Refusals as class facts, checked by the parser before any data is read (``check_args``): why the method
    # has nothing to mask (--masked_softmax 1 refused), why it needs new classes in every task (domain-
    # incremental benchmarks refused); empty: no refusal.
    NO_MASKING: str = ""
    NEEDS_NEW_CLASSES: str = ""
    # Why a step takes several backward passes (A-GEM: two gradients to compare); empty: one backward per step.
    # CUDA graphs (--compile reduce-overhead) need one, so such a method refuses that mode.
    SEVERAL_BACKWARDS: str = ""

    @classmethod
    def check_args(cls, args, n_tasks: int, domain_il: bool) -> None:
        """Refuse, with a one-line ``ValueError``, what the method cannot run: called by the parser with the
        resolved flags and the benchmark's facts, before anything is built.  A method with checks of its
        own extends it (calling ``super().check_args``)."""
        if cls.NO_MASKING and args.masked_softmax:
            raise ValueError(f"--model {cls.NAME} {cls.NO_MASKING}: use --masked_softmax 0")
        if cls.SEVERAL_BACKWARDS and args.compile in CUDA_GRAPH_MODES:
            raise ValueError(f"--compile {args.compile} replays CUDA graphs, which need one backward pass per step, "
                             f"but --model {cls.NAME} {cls.SEVERAL_BACKWARDS}; use --compile default (or 0)")
        if cls.NEEDS_NEW_CLASSES and domain_il:
            raise ValueError(f"--model {cls.NAME} {cls.NEEDS_NEW_CLASSES}; {args.dataset} is domain-incremental: it "
                             f"repeats the same classes in every task; use a class-incremental benchmark")
    # The method needs task boundaries (begin_task / end_task, or the task number): --task_free 1 refuses it.
    NEEDS_BOUNDARIES: bool = False

    def __init__(self, net: nn.Module, args, setting: Setting):
        super().__init__()
        self.net = net
        self.args = args
        self.setting = setting
        self.device = setting.device
        self.current_task = 0
        self.opt: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.buffer = self.build_buffer() if self.USES_BUFFER else None
        self.bn_layers = batch_norm_layers(net)
        if getattr(args, "masked_softmax", 0) == "seen":
            # the classes of the stream so far (a registered buffer, so checkpoints keep it)
            self.register_buffer("stream_seen", torch.zeros(len(setting.task_of_class), dtype=torch.bool,
                                                            device=setting.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def build_buffer(self):
        """The replay buffer of a method with ``USES_BUFFER`` (override to use another policy)."""
        return ReservoirBuffer(self.args.buffer_size, self.setting.device, self.setting.buffer_generator)

    def reinitialise_network(self, generator: torch.Generator) -> None:
        """Give the network new initial weights, drawn as a fresh build draws them, from ``generator``.

        The network is built again by ``backbone.heads.build_network`` (so every
        backbone's own initialisation applies, e.g. the MLP's Xavier-uniform on
        itself and on an FC head, and fixed heads get their same matrix again)
        with the global generator seeded from ``generator`` and restored after,
        and its weights are copied into the existing parameters (an optimizer or
        ``torch.compile`` wrapper keeps referring to them).  The run's other
        random streams are untouched, so runs stay reproducible.
        """
        seed = int(torch.randint(0, 2 ** 62, (), device=generator.device, generator=generator))
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            fresh = build_network(self.args, self.setting.input_shape, self.setting.num_classes)
        getattr(self.net, "_orig_mod", self.net).load_state_dict(fresh.state_dict())

    def build_optimizer(self):
        """Plain SGD (no momentum, no weight decay), as in the reference protocol (``PlainSGD``)."""
        return PlainSGD(self.net.parameters(), lr=self.args.lr)

    def build_scheduler(self, opt):
        """The dataset's per-task schedule (stepped once per epoch), or ``None`` for a constant lr."""
        if not self.setting.lr_milestones:
            return None
        return MultiStepSchedule(opt, self.setting.lr_milestones, self.setting.lr_gamma)

    def prepare_task(self, task: int) -> None:
        """A fresh optimizer and scheduler for every task (so each task restarts from the base lr)."""
        self.current_task = task
        self.opt = self.build_optimizer()
        self.scheduler = self.build_scheduler(self.opt)

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def generators(self) -> dict:
        """The method's own random streams, by name (saved and restored by checkpoints)."""
        return {"buffer": self.setting.buffer_generator}

    def autocast(self):
        """The autocast context of ``--amp`` (the one definition both trainers use)."""
        return amp_autocast(self.args.amp, self.device)

    # The loss hooks: methods write their losses with these, so that the stacked trainer, which runs a
    # method's own ``observe`` for several seeds at once, can give each seed its own mean (utils/stacked).
    cross_entropy = staticmethod(F.cross_entropy)
    mse = staticmethod(F.mse_loss)

    def stream_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the current stream batch under ``--masked_softmax``: 1 masks to each sample's
        task (the paper's masked softmax, ``utils.losses.masked_cross_entropy``, through the ``cross_entropy``
        hook), ``batch`` to the classes present in the batch, ``seen`` to the classes the stream has shown so
        far (this batch's included); 0 keeps every class."""
        mode = self.args.masked_softmax
        if mode == "batch":
            return kept_cross_entropy(logits, labels, present_classes(labels, logits.shape[1]))
        if mode == "seen":
            self.stream_seen.index_fill_(0, labels, True)
            return kept_cross_entropy(logits, labels, self.stream_seen)
        if mode:
            return self.cross_entropy(mask_other_tasks(logits, labels, self.setting.task_of_class), labels)
        return self.cross_entropy(logits, labels)

    def trains_on(self, task: int) -> bool:
        """Whether the trainer runs ``observe`` on ``task``'s stream (methods that fit in closed form at
        ``end_task``, on frozen features, say no and take no step)."""
        return True

    def begin_task(self, task: int, data) -> None:
        """Called before the task's first step, after ``prepare_task``; ``data`` is the task's training split."""

    def end_task(self, task: int, data) -> None:
        """Called after the task's last step, before its evaluation."""

    def observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a stream batch; return the loss as a detached tensor (no sync)."""
        raise NotImplementedError

    def backward(self, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Compute one loss term (forward pass and loss, under autocast) and backpropagate it at once.

        Backpropagating each term right after its forward pass frees that pass's
        activations before the next pass starts, so a method with several
        forward passes (ER: 2, DER++: 3) holds one pass's activations at a time;
        the gradients add up to those of the summed loss.  Returns the term, detached.
        Call ``self.opt.zero_grad(set_to_none=True)`` before the first term and
        ``self.opt.step()`` after the last.
        """
        with self.autocast():
            term = compute_loss()
        term.backward()
        return term.detach()

    def backward_terms(self, terms: list) -> torch.Tensor:
        """Several loss terms, each ``(inputs, loss_of_outputs)``, with their forward passes merged into one
        when the network has no batch norm (``backward_terms`` above); returns their sum, detached."""
        return backward_terms(self.net, terms, self.backward, bool(self.bn_layers))
