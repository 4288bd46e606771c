"""Mixed precision (``--amp``), one definition for both trainers.

``none`` computes in float32; ``bf16`` autocasts to bfloat16 (CPU or CUDA,
no loss scaling needed); ``fp16`` autocasts to float16, which needs a
GradScaler and CUDA (the long-tail trainer's ImageNet-LT / Places-LT preset).
"""
from __future__ import annotations

import contextlib

import torch

from utils.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device):
    """The autocast context of ``--amp`` on ``device`` (a no-op context for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def check_amp(amp: str, device: torch.device) -> None:
    """``fp16`` is refused off CUDA, in one line naming the alternatives."""
    if amp == "fp16" and device.type != "cuda":
        raise UserError(f"--amp fp16 (autocast with a GradScaler; main_lt.py's --load_best_args sets it for "
                        f"imagenet-lt and places-lt) needs CUDA; on {device.type} give --amp bf16 or --amp none")


def grad_scaler(amp: str):
    """A GradScaler for ``fp16`` (float16 gradients underflow without one), else ``None``."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" else None
