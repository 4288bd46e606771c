"""The base class of every continual-learning method."""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from utils.amp import autocast as amp_autocast
from utils.buffer import ReservoirBuffer
from utils.losses import masked_cross_entropy


@dataclass
class Setting:
    """What a method may know about the run besides its hyper-parameters."""
    device: torch.device
    task_of_class: torch.Tensor           # class -> task, on ``device``
    augment: Callable[[torch.Tensor], torch.Tensor]  # raw inputs -> augmented network inputs
    buffer_generator: torch.Generator     # every buffer draw comes from here
    lr_milestones: tuple = ()             # the dataset's schedule: epochs at which the lr is multiplied
    lr_gamma: float = 0.1                 # by this factor (none: a constant lr, the protocol's default)


def batch_norm_layers(net: nn.Module) -> list:
    """The batch-norm layers of ``net`` (the same objects once ``--compile`` wraps it)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def backward_terms(net: nn.Module, terms: list, backward: Callable, batch_norm: bool) -> torch.Tensor:
    """Backpropagate loss terms that each need a forward pass of ``net``; return their sum, detached.

    ``terms`` is a list of ``(inputs, loss_of)`` pairs, ``loss_of(outputs)`` giving the term;
    ``backward(compute_loss)`` computes one loss (under autocast) and backpropagates it.  With batch
    norm (``batch_norm``) every term has its own forward pass, as the reference methods compute
    them (each pass is its own batch for the statistics), backpropagated at once, so one pass's
    activations are held at a time.  Without batch norm a sample's outputs do not depend on the
    rest of its batch: one forward pass over every term's inputs and one backward of the summed
    terms give the same loss and gradients, up to float rounding, in half (ER) or a third (DER++)
    of the operations.  The one mechanism both trainers use (``ContinualModel`` and
    ``utils.stacked.Stack``), so a stacked seed computes its single run's step.
    """
    if batch_norm or len(terms) == 1:
        return functools.reduce(operator.add, [backward(lambda: loss_of(net(x))) for x, loss_of in terms])
    sizes = [len(x) for x, _ in terms]

    def summed():
        outs = net(torch.cat([x for x, _ in terms])).split(sizes)
        return functools.reduce(operator.add, [loss_of(out) for out, (_, loss_of) in zip(outs, terms)])
    return backward(summed)


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
    FLAGS: dict = {}            # the method's own flags: name -> utils.cli.Flag (collected by the parser)
    # --load_best_args: dataset -> buffer size (0 for methods without a buffer) -> flags; name the source.
    BEST_ARGS: dict = {}

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def build_buffer(self):
        """The replay buffer of a method with ``USES_BUFFER`` (override to use another policy)."""
        return ReservoirBuffer(self.args.buffer_size, self.setting.device, self.setting.buffer_generator)

    def reinitialise_network(self, generator: torch.Generator) -> None:
        """Give the network new initial weights, drawn as a fresh build draws them, from ``generator``.

        The network is built again by ``utils.training.build_network`` (so every
        backbone's own initialisation applies, e.g. the MLP's Xavier-uniform on
        itself and on an FC head, and fixed heads get their same matrix again)
        with the global generator seeded from ``generator`` and restored after,
        and its weights are copied into the existing parameters (an optimizer or
        ``torch.compile`` wrapper keeps referring to them).  The run's other
        random streams are untouched, so runs stay reproducible.
        """
        from types import SimpleNamespace

        from datasets import get_dataset_class
        from utils.training import build_network  # imported here: utils.training imports this module

        shape = SimpleNamespace(INPUT_SHAPE=get_dataset_class(self.args.dataset).INPUT_SHAPE,
                                num_classes=len(self.setting.task_of_class))
        seed = int(torch.randint(0, 2 ** 62, (), device=generator.device, generator=generator))
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            fresh = build_network(self.args, shape)
        getattr(self.net, "_orig_mod", self.net).load_state_dict(fresh.state_dict())

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Plain SGD (no momentum, no weight decay), as in the reference protocol."""
        return torch.optim.SGD(self.net.parameters(), lr=self.args.lr)

    def build_scheduler(self, opt: torch.optim.Optimizer):
        """The dataset's per-task schedule (stepped once per epoch), or ``None`` for a constant lr."""
        if not self.setting.lr_milestones:
            return None
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.setting.lr_milestones),
                                                    gamma=self.setting.lr_gamma)

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

    def stream_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the current stream batch, masked to each sample's task when enabled."""
        if self.args.masked_softmax:
            return masked_cross_entropy(logits, labels, self.setting.task_of_class)
        return F.cross_entropy(logits, labels)

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
