"""Replay buffers that live on the run's device: reservoir sampling and a class-balanced memory.

Both keep their entries in the same storage: one tensor per stored field
(``examples``, ``labels``, ``logits``, ...) with ``size + 1`` rows, the extra
row a sink that absorbs discarded writes, so that insertion is one indexed
write per field, with no boolean indexing and no host synchronisation.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from utils.errors import UserError

_BIG = 2 ** 62


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (free CUDA memory, or the host's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_buffer_fits(size: int, entry_bytes: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a buffer larger than the memory left on its device."""
    free = available_memory(device)
    need = size * entry_bytes
    if free is not None and need > free:
        raise UserError(f"--buffer_size {size} needs about {need / 2**30:.1f} GiB on {device} ({entry_bytes} bytes "
                        f"per entry) but only {free / 2**30:.1f} GiB is free; valid here: at most "
                        f"{free // entry_bytes} entries")


class BufferStorage:
    """The storage both policies share: named fields of ``size + 1`` rows (the last one a sink) on one device."""

    def __init__(self, size: int, device: torch.device | str, generator: Optional[torch.Generator] = None):
        if int(size) <= 0:
            raise ValueError(f"buffer size must be a positive integer, got {size}")
        self.size = int(size)
        self.device = torch.device(device)
        self.generator = generator
        self.num_seen = 0  # stream samples offered so far
        self.fields: Dict[str, torch.Tensor] = {}

    def is_empty(self) -> bool:
        return len(self) == 0

    def _check_offer(self, tensors: Dict[str, torch.Tensor]) -> int:
        """The batch size of an offer, after checking its fields; allocates the fields on the first offer."""
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"fields offered to the buffer have different batch sizes: {sorted(sizes)}")
        if self.fields and set(tensors) != set(self.fields):
            raise ValueError(f"buffer stores {sorted(self.fields)}, got {sorted(tensors)}")
        for name, value in tensors.items():
            if name not in self.fields:
                self.fields[name] = torch.zeros((self.size + 1,) + tuple(value.shape[1:]),
                                                dtype=value.dtype, device=self.device)
        return sizes.pop()

    def _write(self, slot: torch.Tensor, tensors: Dict[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            self.fields[name][slot] = value.detach().to(self.fields[name].dtype)

    def draw(self, k: int) -> torch.Tensor:
        """Indices of min(k, len) stored entries, drawn without replacement."""
        if self.is_empty():
            raise RuntimeError("cannot sample from an empty buffer")
        return torch.randperm(len(self), device=self.device, generator=self.generator)[:k]

    def sample(self, k: int, *names: str):
        """Draw min(k, len) stored entries without replacement; return the named fields in order."""
        idx = self.draw(k)
        return tuple(self.fields[name][idx] for name in names)


def reservoir_slots(num_seen: int, draws: torch.Tensor, size: int) -> torch.Tensor:
    """Sequential reservoir sampling's slots for a batch of stream samples, vectorised; ``size`` means
    'not stored'.

    ``draws`` holds one non-negative random integer per sample (dim 0: the batch; further dims: independent
    buffers that have each seen ``num_seen`` samples, as the stacked trainer keeps them).  The n-th sample
    of the stream (0-based) goes to slot n while the buffer is not full, otherwise to slot ``draw % (n + 1)``
    when that is below ``size``; when two samples of one batch pick the same slot the later one wins, as it
    would sequentially.  The one statement of the rule (``ReservoirBuffer`` and ``utils.stacked``).
    """
    batch = draws.shape[0]
    column = (batch,) + (1,) * (draws.dim() - 1)
    n = (num_seen + torch.arange(batch, device=draws.device)).view(column)
    slot = torch.where(n < size, n, draws % (n + 1))
    slot = torch.where(slot < size, slot, size)
    # Last writer wins: keep a sample only if no later sample of the batch takes its slot.
    position = torch.arange(batch, device=draws.device).view(column).expand_as(slot)
    last = torch.full((size + 1,) + tuple(draws.shape[1:]), -1, dtype=torch.long, device=draws.device)
    last.scatter_reduce_(0, slot, position, reduce="amax")
    return torch.where(last.gather(0, slot) == position, slot, size)


class ReservoirBuffer(BufferStorage):
    """Fixed-size memory filled by reservoir sampling over the stream.

    Insertion of a batch is vectorised but equal in distribution to inserting
    its samples one by one with sequential reservoir sampling: the n-th sample
    of the stream (0-based) goes to slot n while the buffer is not full,
    otherwise a uniform j in [0, n] is drawn and the sample replaces slot j
    when j < size.  When two samples of one batch pick the same slot the later
    one wins, as it would sequentially.
    """

    def __len__(self) -> int:
        return min(self.num_seen, self.size)

    def slot_draws(self, batch: int) -> torch.Tensor:
        """The random draws behind the next ``batch`` insertions (one per sample, from the buffer's generator)."""
        return torch.randint(0, _BIG, (batch,), device=self.device, generator=self.generator)

    def reservoir_slots(self, batch: int) -> torch.Tensor:
        """Slots for the next ``batch`` stream samples; ``self.size`` means 'not stored'."""
        return reservoir_slots(self.num_seen, self.slot_draws(batch), self.size)

    @torch.no_grad()
    def add(self, **tensors: torch.Tensor) -> None:
        """Offer a batch to the buffer; every field must have the same batch size."""
        batch = self._check_offer(tensors)
        self._write(self.reservoir_slots(batch), tensors)
        self.num_seen += batch

    def state_dict(self) -> dict:
        return {"size": self.size, "num_seen": self.num_seen,
                "fields": {k: v.cpu() for k, v in self.fields.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint buffer has size {state['size']}, this run {self.size}")
        self.num_seen = int(state["num_seen"])
        self.fields = {k: v.to(self.device) for k, v in state["fields"].items()}


def rank_in_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For each row, how many earlier rows have the same label (0 for a class's first row)."""
    one_hot = F.one_hot(labels, num_classes)
    return (one_hot.cumsum(0) - one_hot).gather(1, labels.unsqueeze(1)).squeeze(1)


class ClassBalancedBuffer(BufferStorage):
    """Fixed-size memory that keeps about as many entries of every class (GDumb, iCaRL, X-DER).

    Entries occupy slots ``0 .. len - 1``; the ``labels`` field (required)
    gives each entry's class and every entry carries an insertion stamp.
    Three operations, all vectorised and free of host synchronisation:

    ``add`` (online, GDumb's greedy balancing sampler, Prabhu et al. 2020):
      a sample of class y enters while its class holds fewer than
      ``k = size // n`` entries, n the number of classes seen so far (counted
      once per batch, including the batch's own classes, so that one batch is
      one vectorised step); into a free slot while there is one, otherwise
      replacing a random entry of the largest class (the lowest class index
      among equally large ones).  Every batch draws one uniform key per slot
      and a class gives up its entries in increasing key order, which makes
      each replaced entry uniform among its class's current entries.
    ``add_balanced`` (task end, iCaRL and X-DER): offered rows enter in row
      order while their class has quota left and a slot is free; no eviction.
    ``shrink``: keep the ``per_class`` oldest entries of every class (for
      iCaRL, whose exemplars enter in herding order, the best ones).

    ``len`` reads the number of entries from the device after an ``add``
    (a synchronisation), so call it outside the inner loop; it is cached
    otherwise.
    """

    def __init__(self, size: int, num_classes: int, device: torch.device | str,
                 generator: Optional[torch.Generator] = None):
        super().__init__(size, device, generator)
        if self.size < num_classes:
            raise UserError(f"a class-balanced buffer needs at least one slot per class: --buffer_size {self.size} "
                            f"is smaller than the {num_classes} classes; valid: --buffer_size >= {num_classes}")
        self.num_classes = int(num_classes)
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=self.device)  # entries per class
        self.seen = torch.zeros(num_classes, dtype=torch.bool, device=self.device)    # classes ever offered
        self.stamp = torch.zeros(self.size + 1, dtype=torch.long, device=self.device)  # insertion order
        self._len: Optional[int] = 0  # host copy of counts.sum(); None after an add (read on demand)

    def __len__(self) -> int:
        if self._len is None:
            self._len = int(self.counts.sum())
        return self._len

    def _offer(self, tensors: Dict[str, torch.Tensor]) -> tuple:
        if "labels" not in tensors:
            raise ValueError("a class-balanced buffer needs the labels field")
        batch = self._check_offer(tensors)
        labels = tensors["labels"].long()
        self.seen[labels] = True
        return batch, labels

    def _store(self, slot: torch.Tensor, accept: torch.Tensor, labels: torch.Tensor,
               tensors: Dict[str, torch.Tensor]) -> None:
        self._write(slot, tensors)
        self.stamp[slot] = self.num_seen + torch.arange(len(slot), device=self.device)
        self.counts.index_add_(0, labels, accept.long())
        self.num_seen += len(slot)
        self._len = None

    def _victims(self, k: torch.Tensor, n: int) -> torch.Tensor:
        """The first ``n`` slots the greedy sampler empties, in order, for a batch whose cap is ``k``.

        Sequentially each eviction takes the largest class (lowest index among
        ties) and that class's entry with the lowest key.  A class at count c
        gives up its entry of key-rank r (0-based) when it is at count c - r, so
        ordering the entries by (count then, descending; class, ascending) is the
        eviction order.  Only classes above the cap ever give up entries (a
        class below it is the one taking the slot, so a larger one exists), and
        they receive none during the batch, so the order is fixed at its start.
        """
        size, classes = self.size, self.num_classes
        stored = self.counts.sum()
        occupied = torch.arange(size, device=self.device) < stored
        empty = torch.full((size,), classes, dtype=torch.long, device=self.device)  # one class past the last
        cls = torch.where(occupied, self.fields["labels"][:size].long(), empty)
        key = torch.rand(size, dtype=torch.float64, device=self.device, generator=self.generator)
        order = torch.argsort(cls.double() * 2 + key, stable=True)  # by class, then key
        sorted_cls = cls[order]
        counts = torch.cat((self.counts, self.counts.new_zeros(1)))  # the extra class: empty slots
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(size, device=self.device) - start[sorted_cls]
        level = counts[sorted_cls] - rank  # the class's count when it gives this entry up
        priority = torch.where(level > k, -level * (classes + 1) + sorted_cls, torch.full_like(level, _BIG))
        first = torch.topk(priority, min(n, size), largest=False).indices  # sorted ascending
        return order[first]

    @torch.no_grad()
    def add(self, **tensors: torch.Tensor) -> None:
        """Offer a stream batch to the greedy balancing sampler (see the class docstring)."""
        batch, labels = self._offer(tensors)
        k = self.size // self.seen.sum().clamp(min=1)
        accept = rank_in_class(labels, self.num_classes) < k - self.counts[labels]
        order = torch.cumsum(accept.long(), 0) - 1            # among the accepted samples
        free = self.size - self.counts.sum()
        fill = accept & (order < free)
        evict = accept & (order >= free)
        victims = self._victims(k, batch)
        victim = victims[(order - free).clamp(0, len(victims) - 1)]
        sink = torch.full_like(labels, self.size)
        slot = torch.where(fill, self.size - free + order, torch.where(evict, victim, sink))
        old = self.fields["labels"][slot].long()                # the replaced entries' classes
        self.counts.index_add_(0, old, -evict.long())
        self._store(slot, accept, labels, tensors)

    @torch.no_grad()
    def add_balanced(self, quota: torch.Tensor, **tensors: torch.Tensor) -> None:
        """Rows enter in row order while their class has ``quota`` (per class) left and a slot is free."""
        batch, labels = self._offer(tensors)
        accept = rank_in_class(labels, self.num_classes) < quota.to(self.device)[labels]
        order = torch.cumsum(accept.long(), 0) - 1
        free = self.size - self.counts.sum()
        accept = accept & (order < free)
        slot = torch.where(accept, self.size - free + order, torch.full_like(labels, self.size))
        self._store(slot, accept, labels, tensors)

    @torch.no_grad()
    def shrink(self, per_class: int) -> None:
        """Keep the ``per_class`` oldest entries of every class; the kept ones move to the first slots, in order."""
        n = len(self)
        if n == 0:
            return
        labels, stamp = self.fields["labels"][:n].long(), self.stamp[:n]
        by_stamp = torch.argsort(stamp, stable=True)
        order = by_stamp[torch.argsort(labels[by_stamp], stable=True)]  # by class, then age
        start = torch.cumsum(self.counts, 0) - self.counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=self.device) - start[labels[order]]
        kept = torch.nonzero(rank < per_class).flatten()  # once per task: a synchronisation is fine here
        for name, value in self.fields.items():
            value[:len(kept)] = value[kept]  # advanced indexing copies first
        self.stamp[:len(kept)] = self.stamp[kept]
        self.counts.clamp_(max=per_class)
        self._len = len(kept)

    def state_dict(self) -> dict:
        return {"size": self.size, "num_seen": self.num_seen, "fields": {k: v.cpu() for k, v in self.fields.items()},
                "counts": self.counts.cpu(), "seen": self.seen.cpu(), "stamp": self.stamp.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint buffer has size {state['size']}, this run {self.size}")
        self.num_seen = int(state["num_seen"])
        self.fields = {k: v.to(self.device) for k, v in state["fields"].items()}
        self.counts = state["counts"].to(self.device)
        self.seen = state["seen"].to(self.device)
        self.stamp = state["stamp"].to(self.device)
        self._len = None
