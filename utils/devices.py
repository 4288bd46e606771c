"""The run's device: ``--device`` checked against what this machine has."""
from __future__ import annotations

import torch


def resolve_device(name: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; otherwise a checked ``cpu``, ``cuda`` or ``cuda:N``."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid --device {name!r}; valid choices: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid --device {name!r}; valid choices: cpu, cuda, cuda:N")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"invalid --device {name!r}: there is one CPU device; use --device cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
