"""Configurations: which runs a summary cell may hold.

A cell holds the seeds of one configuration: runs equal in every resolved flag
except the seed and the operational flags (``results.NOT_COMPARED``).  Runs of
one (benchmark, buffer, method) that differ in anything else are different rows,
the method label extended by the differing values (``er+M lr=0.01``), and the
paired HEAD - FC rows pair only runs whose configurations differ in the head
alone.  ``--group_by`` / ``--ignore`` choose the flags that define a
configuration; a seed that appears twice in one configuration is an error.

Files written before a flag existed lack it: the flag's default stands in, so
old and new runs at the default land in one cell.
"""
from __future__ import annotations

import json
from typing import Iterable, Optional

import pandas as pd

from backbone import backbone_names, get_backbone_class
from backbone.heads import get_head_class, head_names
from models import get_model_class
from utils.args import DEFAULTS
from utils.flags import canonical
from utils.registry import UnknownNameError
from utils.summarize.results import NOT_COMPARED

ROW_KEYS = ("dataset", "buffer_size", "model", "masked_softmax", "method", "imbalance_ratio")  # in the labels already


class ConfigurationError(Exception):
    """Runs that cannot be summarised as asked: the message is the one line to print."""


def _flags_of(registry_get, name) -> dict:
    try:
        return {flag: spec.default for flag, spec in getattr(registry_get(name), "FLAGS", {}).items()}
    except UnknownNameError:
        return {}


def owned_defaults(args: dict) -> dict:
    """The defaults of the flags the run's method, head and backbone declare (the values ``utils.args``
    resolves when none is given); every other owned flag is ``None`` in a run's arguments."""
    out = {}
    for flag in {f for n in head_names() for f in get_head_class(n).FLAGS} | {
            f for n in backbone_names() for f in getattr(get_backbone_class(n), "FLAGS", {})}:
        out[flag] = None
    out.update(_flags_of(get_backbone_class, args.get("backbone")))
    out.update(_flags_of(get_head_class, args.get("classifier")))
    out.update(_flags_of(get_model_class, args.get("model")))
    return out


def filled_identity(identity: dict) -> dict:
    """A continual-learning run's identity with every flag it lacks (an older file) at its default."""
    defaults = {k: v for k, v in {**DEFAULTS, **owned_defaults(identity)}.items() if k not in NOT_COMPARED}
    return {**defaults, **identity}


def _key(values: dict) -> str:
    return json.dumps({k: canonical(v) if v is not None else None for k, v in sorted(values.items())},
                      default=str)


def configurations(frame: pd.DataFrame, cell: list, head_keys: Iterable[str] = (),
                   group_by: Optional[list] = None, ignore: Iterable[str] = ()) -> pd.DataFrame:
    """``frame`` with each run's ``method`` extended by the values that tell its configuration apart from
    the others of its ``cell`` (e.g. dataset, buffer, method).  ``head_keys`` (the classifier and the heads'
    flags) are shown by the head label and left out of the method's; ``group_by`` (only these flags
    define a configuration) and ``ignore`` (these do not) are the summary's options.

    Raises ``ConfigurationError`` when a seed appears twice in one configuration."""
    ignore, head_keys = set(ignore), set(head_keys)
    if group_by is not None:
        unknown = sorted(set(group_by) - set().union(*frame["identity"]) - set(cell))
        if unknown:
            raise ConfigurationError(f"--group_by {','.join(unknown)}: no run has such a flag")

    def kept(identity: dict) -> dict:
        keys = set(identity) if group_by is None else set(group_by) | head_keys
        return {k: identity.get(k) for k in keys if k not in ignore and k not in ROW_KEYS}

    shown = [{k: v for k, v in kept(i).items() if k not in head_keys} for i in frame["identity"]]
    labels = list(frame["method"])
    for _, index in frame.groupby(cell, sort=False).indices.items():
        varying = sorted(k for k in set().union(*(shown[i] for i in index))
                         if len({_key({k: shown[i].get(k)}) for i in index}) > 1)
        for i in index:
            labels[i] = " ".join([labels[i]] + [f"{k}={canonical(shown[i].get(k))}" for k in varying])
    frame = frame.assign(method=labels)
    seen = {}
    for row in frame.itertuples():
        config = (tuple(getattr(row, c) for c in cell if c != "method"), row.method, row.head
                  if "head" in frame.columns else "", _key(kept(row.identity)), row.seed)
        if config in seen:
            raise ConfigurationError(f"seed {row.seed} appears twice in one configuration ({row.method}"
                                     + (f", {row.head}" if "head" in frame.columns else "")
                                     + f"): {seen[config]} and {row.path}")
        seen[config] = row.path
    return frame
