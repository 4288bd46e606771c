"""The seeds' replay buffers as one: each field a (size + 1, S, ...) tensor, every draw the seed's own."""
from __future__ import annotations

import torch

from utils.buffer import ReservoirBuffer, reservoir_slots
from utils.errors import UserError


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` for an index into dim 0, as whole-row copies (``index_select``): the elementwise
    kernel of advanced indexing is several times slower on stacked uint8 images."""
    return tensor.index_select(0, index.flatten()).view(*index.shape, *tensor.shape[1:])


class StackedBuffer:
    """The seeds' reservoir buffers with each field as one (size + 1, S, ...) tensor: one gather per draw.

    Every random draw comes from the seed's own ``ReservoirBuffer`` generator
    with the call its single run makes (``randperm`` to sample, ``randint`` to
    insert); what is computed from the draws is vectorised over the seeds
    (``utils.buffer.reservoir_slots`` with a seed column), so each seed stores
    and replays exactly what its single run does.
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
        """(batch, S) slots for the next stream samples of every seed; ``size`` means 'not stored': each
        seed's own draws, through the one statement of the rule (``utils.buffer.reservoir_slots``)."""
        draws = torch.stack([b.slot_draws(batch) for b in self.buffers], 1)
        return reservoir_slots(self.buffers[0].num_seen, draws, self.size)

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
