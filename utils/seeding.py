"""Seeds derived per purpose, so that random streams do not interfere.

A run's seed feeds several independent generators (weight initialisation,
data order, augmentation, buffer draws, the FNO partition).  Keeping them
apart is what makes an FC run and an FNO run with the same seed a paired
comparison: building the FNO matrix draws nothing from the stream that orders
the data or fills the buffer.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed that depends only on ``seed`` and the name ``purpose``."""
    digest = hashlib.sha256(f"{int(seed)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(seed, purpose))
    return gen


def seed_everything(seed: int) -> None:
    """Seed the global generators (used for weight initialisation only)."""
    random.seed(seed)
    np.random.seed(derive_seed(seed, "numpy") % 2**32)
    torch.manual_seed(seed)
