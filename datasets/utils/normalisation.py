"""Per-channel normalisation constants, (mean, std) of pixel values in [0, 1], for every benchmark.

One table, so that a benchmark and its long-tailed or continual variant cannot
drift apart by a copied digit; each dataset passes its pair to ``DeviceTransform``.
"""
from __future__ import annotations

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINY_IMAGENET = ((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821))
# The long-tail authors normalise CIFAR-10-LT and CIFAR-100-LT alike: CIFAR-10's mean with the std
# of the common CIFAR training recipes (their imbalance_cifar.py), not CIFAR-10's own std.
CIFAR_LT = (CIFAR10[0], (0.2023, 0.1994, 0.2010))
