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

    def train_seeds(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """``train`` for S runs at once: x (N, S, C, H, W), run s's crops and flips drawn from ``generators[s]``
        with the calls its own ``train`` makes, then one crop-and-flip gather and one normalisation for all
        (each run's values exactly those of ``train`` on its own N images)."""
        n, seeds = x.shape[:2]
        if not self.augments:
            return self._finish(x)
        draws = [crop_flip_draws(n, self.crop_padding, self.flip, x.device, g) for g in generators]
        offsets = torch.stack([o for o, _ in draws], 2).reshape(2, n * seeds, 1)  # sample-major: (n, s) -> n*S + s
        flipped = None if not self.flip else torch.stack([f for _, f in draws], 1).reshape(n * seeds, 1)
        out = apply_crop_flip(x.reshape(n * seeds, *x.shape[2:]), self.crop_padding, offsets, flipped)
        return self._finish(out).view(x.shape)


def crop_flip_draws(b: int, padding: int, flip: bool, device, generator: Optional[torch.Generator] = None) -> tuple:
    """The random draws of ``random_crop_flip`` for a batch of ``b``: crop offsets (2, b, 1) and, with ``flip``,
    which samples are flipped (b, 1) (else ``None``), in the order ``random_crop_flip`` draws them."""
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), device=device, generator=generator)
    else:
        offsets = torch.zeros(2, b, 1, dtype=torch.long, device=device)
    flipped = torch.rand(b, 1, device=device, generator=generator) < 0.5 if flip else None
    return offsets, flipped


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip of a batch (B, C, H, W) as one gather."""
    return apply_crop_flip(x, padding, *crop_flip_draws(len(x), padding, flip, x.device, generator))


def apply_crop_flip(x: torch.Tensor, padding: int, offsets: torch.Tensor,
                    flipped: Optional[torch.Tensor]) -> torch.Tensor:
    """The crop (from the zero-padded image, at ``offsets``) and flip (where ``flipped``) of ``crop_flip_draws``."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = offsets[0] + torch.arange(h, device=dev)              # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)              # (B, W)
    if flipped is not None:
        cols = torch.where(flipped, (w - 1) - cols, cols)
    cols = offsets[1] + cols
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
