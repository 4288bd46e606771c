"""Batched, on-device image transforms: one random draw per sample, no per-sample Python.

The data of a split lives on the run's device as raw values (uint8 pixels);
a batch is an index gather, and these functions turn it into the network's
float input.  The replay buffer stores raw values too and goes through the
same ``train`` transform when replayed.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch


class DeviceTransform:
    """Scale raw values, optionally random-crop with zero padding and flip, then normalise.

    ``scale`` divides the raw values (255 for uint8 pixels); ``mean`` / ``std``
    are per-channel constants applied after scaling (none: no normalisation);
    ``crop_padding`` > 0 enables a random crop of the original size from the
    zero-padded image; ``flip`` enables a horizontal flip with probability 1/2.
    """

    def __init__(self, scale: float, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, crop_padding: int = 0, flip: bool = False):
        self.scale = float(scale)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)

    def to(self, device) -> "DeviceTransform":
        """A copy whose normalisation constants live on ``device``.

        Use it once per run: moving the constants for every batch would be a
        blocking host-to-device copy (a synchronisation) on CUDA.
        """
        moved = copy.copy(self)
        if self.mean is not None:
            moved.mean, moved.std = self.mean.to(device), self.std.to(device)
        return moved

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        # uint8 pixels: one kernel casts and divides (the same float32 values as .float() / scale)
        x = x.div(self.scale) if x.dtype == torch.uint8 else x.float() / self.scale
        if self.mean is not None:
            mean = self.mean.to(x.device)
            std = self.std.to(x.device)
            x = (x - mean) / std
        return x

    def test(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: scale and normalise only."""
        return self._finish(x)

    def train(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The training transform, drawing crop offsets and flips from ``generator``."""
        if not self.augments:
            return self._finish(x)
        return self._finish(random_crop_flip(x, self.crop_padding, self.flip, generator))


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip of a batch (B, C, H, W) as one gather."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), device=dev, generator=generator)
    else:
        offsets = torch.zeros(2, b, 1, dtype=torch.long, device=dev)
    rows = offsets[0] + torch.arange(h, device=dev)              # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)              # (B, W)
    if flip:
        flipped = torch.rand(b, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped, (w - 1) - cols, cols)
    cols = offsets[1] + cols
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
