"""A reservoir replay buffer that lives on the run's device, with vectorised insertion."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from utils.errors import UserError

_BIG = 2 ** 62


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (free CUDA memory, or the host's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
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


class ReservoirBuffer:
    """Fixed-size memory filled by reservoir sampling over the stream.

    Insertion of a batch is vectorised but equal in distribution to inserting
    its samples one by one with sequential reservoir sampling: the n-th sample
    of the stream (0-based) goes to slot n while the buffer is not full,
    otherwise a uniform j in [0, n] is drawn and the sample replaces slot j
    when j < size.  When two samples of one batch pick the same slot the later
    one wins, as it would sequentially.  Each stored field (``examples``,
    ``labels``, ``logits``, ...) is a tensor with ``size + 1`` rows; the extra
    row is a sink that absorbs discarded writes, so insertion needs no
    boolean indexing and no host synchronisation.
    """

    def __init__(self, size: int, device: torch.device | str, generator: Optional[torch.Generator] = None):
        if int(size) <= 0:
            raise ValueError(f"buffer size must be a positive integer, got {size}")
        self.size = int(size)
        self.device = torch.device(device)
        self.generator = generator
        self.num_seen = 0
        self.fields: Dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return min(self.num_seen, self.size)

    def is_empty(self) -> bool:
        return self.num_seen == 0

    def _allocate(self, tensors: Dict[str, torch.Tensor]) -> None:
        for name, value in tensors.items():
            if name not in self.fields:
                self.fields[name] = torch.zeros((self.size + 1,) + tuple(value.shape[1:]),
                                                dtype=value.dtype, device=self.device)

    def reservoir_slots(self, batch: int) -> torch.Tensor:
        """Slots for the next ``batch`` stream samples; ``self.size`` means 'not stored'."""
        n = self.num_seen + torch.arange(batch, device=self.device)
        draw = torch.randint(0, _BIG, (batch,), device=self.device, generator=self.generator) % (n + 1)
        slot = torch.where(n < self.size, n, draw)
        slot = torch.where(slot < self.size, slot, torch.full_like(slot, self.size))
        # Last writer wins: keep a sample only if no later sample of the batch takes its slot.
        position = torch.arange(batch, device=self.device)
        last = torch.full((self.size + 1,), -1, dtype=torch.long, device=self.device)
        last.scatter_reduce_(0, slot, position, reduce="amax")
        return torch.where(last[slot] == position, slot, torch.full_like(slot, self.size))

    @torch.no_grad()
    def add(self, **tensors: torch.Tensor) -> None:
        """Offer a batch to the buffer; every field must have the same batch size."""
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"fields offered to the buffer have different batch sizes: {sorted(sizes)}")
        if self.fields and set(tensors) != set(self.fields):
            raise ValueError(f"buffer stores {sorted(self.fields)}, got {sorted(tensors)}")
        self._allocate(tensors)
        batch = sizes.pop()
        slot = self.reservoir_slots(batch)
        for name, value in tensors.items():
            self.fields[name][slot] = value.detach().to(self.fields[name].dtype)
        self.num_seen += batch

    def sample(self, k: int, *names: str):
        """Draw min(k, len) stored entries without replacement; return the named fields in order."""
        if self.is_empty():
            raise RuntimeError("cannot sample from an empty buffer")
        idx = torch.randperm(len(self), device=self.device, generator=self.generator)[:k]
        return tuple(self.fields[name][idx] for name in names)

    def state_dict(self) -> dict:
        return {"size": self.size, "num_seen": self.num_seen,
                "fields": {k: v.cpu() for k, v in self.fields.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint buffer has size {state['size']}, this run {self.size}")
        self.num_seen = int(state["num_seen"])
        self.fields = {k: v.to(self.device) for k, v in state["fields"].items()}
