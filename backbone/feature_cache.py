"""A frozen network's features, computed once per distinct input and kept on the device.

Methods that never train their backbone (SimpleCIL; RanPAC and APER after their
first-session adaptation) see the same images again and again: the task's
training images when they fit, and the test images at every evaluation (after
task t, the test images of all t tasks).  ``FeatureCache`` wraps the frozen
network; it keys every input by a 64-bit hash of its exact bits (the network
input, after the deterministic test transform), computes the features of the
inputs it has not seen, and returns the stored ones for the others.  Equal
keys mean equal inputs up to a hash collision (about N^2 / 2^64 for N cached
images), and equal inputs have equal features, so the cache changes no result.
It lives in memory (N x D floats: 30,000 x 768 float32 = 92 MB for ImageNet-R);
it must be cleared whenever the network changes (``clear``).
"""
from __future__ import annotations

import torch
from torch import nn

HASH_SEED = 0x5EED  # the hash weights: fixed, so that a key never depends on the run


class FeatureCache:
    """``cache(x)`` = ``net(x)`` for a frozen ``net``, each distinct input computed once.

    Not a module: the network stays where its owner registered it (its checkpoint names do not change)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.keys = torch.empty(0, dtype=torch.long)      # sorted
        self.values = torch.empty(0)
        self._weights = torch.empty(0, dtype=torch.long)  # one odd int64 multiplier per input element
        self.computed = 0                                  # inputs whose features were computed (a statistic)

    def clear(self) -> None:
        self.keys, self.values = self.keys[:0], self.values[:0]

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """One int64 per input: the sum of its elements' bit patterns times fixed odd random multipliers,
        modulo 2^64 (integer arithmetic wraps, so the key does not depend on the batch it is computed in)."""
        flat = x.detach().flatten(1)
        bits = flat.float().view(torch.int32).long() if flat.is_floating_point() else flat.long()
        if self._weights.numel() != bits.shape[1] or self._weights.device != bits.device:
            g = torch.Generator().manual_seed(HASH_SEED)
            w = torch.randint(-2 ** 62, 2 ** 62, (bits.shape[1],), generator=g) * 2 + 1
            self._weights = w.to(bits.device)
        return (bits * self._weights).sum(1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.hash(x)
        if len(self.keys):
            at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
            hit = self.keys[at] == keys
        else:
            at, hit = torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        miss = torch.nonzero(~hit).flatten()
        if len(miss):  # one host synchronisation per batch: only the unseen inputs go through the network
            new_keys, first = unique_first(keys[miss])
            fresh = self.net(x[miss[first]]).float()
            self.computed += len(first)
            self.keys = torch.cat([self.keys.to(keys.device), new_keys])
            self.values = torch.cat([self.values.to(fresh.device).view(-1, fresh.shape[1]), fresh])
            order = torch.argsort(self.keys)
            self.keys, self.values = self.keys[order], self.values[order]
            at = torch.searchsorted(self.keys, keys)
        return self.values[at]


def unique_first(keys: torch.Tensor):
    """The distinct values of ``keys`` and, for each, the position of its first occurrence."""
    values, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(values),), len(keys), dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
    return values, first
