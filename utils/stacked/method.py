"""``Stack``: the state a method's ``observe`` works on, for S seeds at once.

A stacked step is the method's own ``observe`` (the one in ``models/``), run on
a ``Stack`` instead of the method: the stack holds the stacked network, the
stacked buffer and a plain-SGD optimizer over the stacked parameters, gives
each seed's augmentation from its own stream (``setting.augment``), and
supplies the per-seed forms of the loss hooks every method writes its losses
with (``cross_entropy``, ``mse``: each seed's mean over its own samples,
summed before ``backward``, so each seed's slice of the gradient is its own).
The method's other functions that ``observe`` calls (``stream_loss``,
``replay_batch``, ...) are bound to the stack too, so the math of a method
is written once, in its own file.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Callable

import torch

from models.continual_model import PlainSGD, backward_terms
from utils.stacked.buffer import StackedBuffer, gather_rows
from utils.stacked.layers import SeedStack, unstack_network
from utils.stacked.losses import seed_cross_entropy, seed_mse

# The method's functions that its ``observe`` may call, run on the stack (those the method's class has).
METHOD_CODE = ("observe", "stream_loss", "replay_batch", "replay_label_weight")


class Stack:
    """What a stacked step works on: the stacked network, its optimizer and scheduler (the method's plain
    SGD), the stacked buffer, each seed's augmentation stream, and the method's code bound to it."""

    cross_entropy = staticmethod(seed_cross_entropy)
    mse = staticmethod(seed_mse)

    def __init__(self, runs: list):
        model = runs[0].model
        self.runs, self.args = runs, model.args
        self.setting = dataclasses.replace(model.setting, augment=self.augment)
        self.net = SeedStack([run.model.net for run in runs]).train()
        if self.args.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = PlainSGD(self.net.parameters(), lr=self.args.lr)  # the method's plain SGD, stacked
        self.scheduler = model.build_scheduler(self.opt)
        self.batch_norm = bool(model.bn_layers)
        self.buffer = None if model.buffer is None else StackedBuffer([run.model.buffer for run in runs])
        self.autocast = model.autocast
        self.transform = runs[0].transform
        self.generators = [run.augment_generator for run in runs]
        for name in METHOD_CODE:
            if hasattr(type(model), name):
                setattr(self, name, types.MethodType(getattr(type(model), name), self))
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
        """Raw inputs (N, S, ...) -> network inputs, each seed's crops and flips drawn from its own augmentation
        stream, then cropped, flipped and normalised for all seeds at once."""
        return self.transform.train_seeds(raw, self.generators)

    def backward(self, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``ContinualModel.backward`` for S seeds: the per-seed terms (S,) summed and backpropagated at once."""
        with self.autocast():
            term = compute_loss()
        term.sum().backward()
        return term.detach()

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
