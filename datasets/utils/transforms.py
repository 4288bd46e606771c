"""Batched, on-device image transforms: one random draw per sample, no per-sample Python.

The data of a split lives on the run's device as raw values (uint8 pixels);
a batch is an index gather, and these functions turn it into the network's
float input.  The replay buffer stores raw values too and goes through the
same ``train`` transform when replayed.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple

import torch


class DeviceTransform:
    """Scale raw values, optionally random-crop with zero padding and flip, then normalise.

    ``scale`` divides the raw values (255 for uint8 pixels); ``mean`` / ``std``
    are per-channel constants applied after scaling (none: no normalisation);
    ``crop_padding`` > 0 enables a random crop of the original size from the
    zero-padded image; ``flip`` enables a horizontal flip with probability 1/2.

    ``size`` > 0 makes the output ``size`` x ``size`` pixels whatever the stored
    size (the 224-pixel benchmarks of pretrained models): training takes a random
    resized crop (``crop_scale``: the range of the crop's share of the image
    area; aspect ratios in [3/4, 4/3], as torchvision's RandomResizedCrop) and
    the flip; testing keeps the central ``test_crop`` share of each side
    (``224 / 256``: resize to 256 and centre-crop 224) resized to ``size``.
    Both are one bilinear resampling of the batch (``resized_crops``).
    """

    def __init__(self, scale: float, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, crop_padding: int = 0, flip: bool = False,
                 size: int = 0, crop_scale: Tuple[float, float] = (0.08, 1.0), test_crop: float = 1.0):
        self.scale = float(scale)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        if size and crop_padding:
            raise ValueError("a DeviceTransform either pads and crops (crop_padding) or resizes (size), not both")
        self.size = int(size)
        self.crop_scale = tuple(crop_scale)
        self.test_crop = float(test_crop)

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
        return self.crop_padding > 0 or self.flip or self.size > 0

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        # uint8 pixels: one kernel casts and divides (the same float32 values as .float() / scale)
        x = x.div(self.scale) if x.dtype == torch.uint8 else x.float() / self.scale
        if self.mean is not None:
            mean = self.mean.to(x.device)
            std = self.std.to(x.device)
            x = (x - mean) / std
        return x

    def test(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: scale and normalise (and with ``size``, the central crop resized)."""
        if self.size:
            b = len(x)
            boxes = torch.tensor([self.test_crop, self.test_crop, 0.0, 0.0], device=x.device).expand(b, 4)
            x = resized_crops(x, boxes, self.size)
        return self._finish(x)

    def train(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The training transform, drawing crop offsets and flips from ``generator``."""
        if not self.augments:
            return self._finish(x)
        if self.size:
            boxes = random_boxes(len(x), self.crop_scale, self.flip, x.device, generator)
            return self._finish(resized_crops(x, boxes, self.size))
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


def random_boxes(b: int, area: Tuple[float, float], flip: bool, device,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``b`` random resized crops as (width, height, centre x, centre y) in shares of a square image's side;
    a negative width mirrors the crop (``flip``: with probability 1/2).

    The crop's area share is uniform in ``area`` and its aspect ratio log-uniform
    in [3/4, 4/3], as torchvision's RandomResizedCrop draws them; where that
    crop does not fit, its sides are clipped to the image (torchvision instead
    redraws up to ten times, then takes a central crop), so one draw serves the
    whole batch without a loop.
    """
    draws = torch.rand(4, b, device=device, generator=generator)
    share = area[0] + (area[1] - area[0]) * draws[0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draws[1])
    width = torch.sqrt(share * ratio).clamp(max=1.0)
    height = torch.sqrt(share / ratio).clamp(max=1.0)
    centre_x = (draws[2] - 0.5) * (1 - width)  # in [-(1 - w) / 2, (1 - w) / 2]: the crop stays inside
    centre_y = (draws[3] - 0.5) * (1 - height)
    if flip:
        mirrored = torch.rand(b, device=device, generator=generator) < 0.5
        width = torch.where(mirrored, -width, width)
    return torch.stack([width, height, centre_x, centre_y], dim=1)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, H, W) to its box of ``boxes`` (B x 4: width, height and centre offsets,
    in shares of the side, see ``random_boxes``) and resize it to ``size`` x ``size``, bilinearly, in one
    ``grid_sample`` over the batch.  Returns float values on the scale of ``x`` (0-255 for uint8 pixels).

    A central box of share ``size / H`` samples the central ``size`` pixels (up to float rounding)."""
    b, c = x.shape[:2]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = boxes[:, 0], boxes[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = 2 * boxes[:, 2], 2 * boxes[:, 3]  # grid coordinates span [-1, 1]
    grid = torch.nn.functional.affine_grid(theta, [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


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
