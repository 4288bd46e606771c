"""Pretrained weights for the backbones: ``--pretrained hub|none|FILE``, checked before any data is read.

``hub`` asks the weights' own library to fetch them (timm from the Hugging Face
hub, torchvision from download.pytorch.org) and works where a network is there
or the weights are already in that library's cache; ``none`` keeps the random
initialisation (tests, smoke runs); anything else is a local file: a state dict
saved by ``torch.save`` (``.pth``, ``.pt``, ``.bin``) or a ``.safetensors``
file, loaded strictly (every name and shape must match, so that a run never
fine-tunes from a half-random network).  The classifier of the file's network
(``head.*`` for timm, ``fc.*`` for torchvision) is dropped: the run brings its
own head.
"""
from __future__ import annotations

import argparse
import os
import socket
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from utils.errors import DataError

HUB, NONE = "hub", "none"
NETWORK_TIMEOUT_S = 3.0


def weights_source(text: str) -> str:
    """``--pretrained``'s type: ``hub``, ``none`` or a path (checked to exist at resolve time, see ``preflight``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected hub, none or a weights file, got ''")
    return text if text.lower() not in (HUB, NONE) else text.lower()


def reachable(host: str, port: int = 443, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (the no-network check)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def preflight(source: str, weight_name: str, cached: Callable[[], bool], host: Optional[str]) -> None:
    """Refuse, in one line (``ValueError``: the parser's exit 2), weights that cannot be had.

    ``weight_name`` names the weights for the message; ``cached()`` says whether
    the hub copy is already on disk; ``host`` is where the hub downloads from
    (``None``: the backbone has no published weights).
    """
    if source == NONE:
        return
    if source != HUB:
        if not os.path.isfile(source):
            raise ValueError(f"--pretrained {source}: no such file (give a state-dict or .safetensors file of "
                             f"{weight_name}, hub, or none)")
        return
    if host is None:
        raise ValueError(f"--pretrained hub: {weight_name} has no published weights; use --pretrained none or FILE")
    if cached():
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not reachable(host):
        raise ValueError(f"--pretrained hub: the weights {weight_name} are not cached and {host} cannot be "
                         f"reached; download them where a network is, then give --pretrained FILE (a state dict "
                         f"or .safetensors file) or copy them into the hub cache")


def read_state(path: str) -> dict:
    """A state dict from a ``torch.save`` file or a ``.safetensors`` file; ``DataError`` in one line otherwise."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file  # a dependency of timm
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"--pretrained {path}: no such file") from None
    except Exception as exc:  # both loaders raise many types on a corrupt or foreign file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"--pretrained {path}: not a readable state-dict or safetensors file ({reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"--pretrained {path}: expected a state dict (a mapping of names to tensors)")
    return state


def _listed(keys: list) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_strict(target: nn.Module, path: str, dropped_prefixes: Iterable[str] = ()) -> None:
    """Load the file at ``path`` into ``target``; every name and shape must match (the file's classifier,
    names starting with one of ``dropped_prefixes``, is left out); ``DataError`` naming the misfits otherwise."""
    prefixes = tuple(dropped_prefixes)
    state = {k: v for k, v in read_state(path).items() if not (prefixes and k.startswith(prefixes))}
    own = target.state_dict()
    problems = {"missing": sorted(set(own) - set(state)), "unexpected": sorted(set(state) - set(own)),
                "wrong shape": sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)}
    listed = [f"{what}: {_listed(keys)}" for what, keys in problems.items() if keys]
    if listed:
        raise DataError(f"--pretrained {path} does not fit {type(target).__name__} ({'; '.join(listed)})")
    target.load_state_dict(state)
