"""Several seeds of one configuration (``--seeds``): the flag's values and each seed's single-run arguments.

Here, below the parser and the trainers, because ``utils.args`` names every seed's results file and
checkpoint folder when it resolves ``--seeds``, the grid runner forms packs of seeds, and the stacked
engine (``utils.stacked``) builds each seed's run with exactly its single run's arguments.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Optional

from utils.flags import results_name

MAX_SEEDS = 1024


def parse_seeds(text: str) -> list:
    """``--seeds``: ``1-10`` (both ends included), ``1,4,7`` or a mix (``1-3,7``); distinct seeds, in order."""
    seeds = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"expected seeds such as 1-10 or 1,4,7, got {text!r}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise argparse.ArgumentTypeError(f"the range {part.strip()!r} ends before it starts")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds in one process, got more in {text!r}")
        seeds += range(first, last + 1)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"seed {repeated[0]} is given twice in {text!r}")
    return seeds


def for_seed(template: Optional[str], seed: int) -> Optional[str]:
    """``template`` with ``{seed}`` replaced by ``seed`` (plain replacement: other braces stay as they are)."""
    return None if template is None else template.replace("{seed}", str(seed))


def results_template(results_dir: str, explicit: dict, seeds: list) -> str:
    """A ``--results_file`` template with ``{seed}`` that names each seed's file under ``--results_dir``
    exactly as the single run ``--seed s`` with the same explicit flags (and the grid runner) names it;
    ``ValueError`` when the names are shortened with a hash, which no template can reproduce."""
    flags = {k: v for k, v in explicit.items() if k not in ("seeds", "seed")}
    first = results_name({**flags, "seed": seeds[0]})
    template = ",".join("seed={seed}" if pair == f"seed={seeds[0]}" else pair for pair in first.split(","))
    path = os.path.join(results_dir, template + ".json")
    for seed in seeds:
        if for_seed(path, seed) != os.path.join(results_dir, results_name({**flags, "seed": seed}) + ".json"):
            raise ValueError("--results_dir with --seeds: these flags give results names shortened with a hash; "
                             "give --results_file with {seed} in it instead")
    return path


def seed_args(args, seed: int):
    """The arguments of the single run with ``seed``: ``--seed``, ``{seed}`` filled in ``--results_file``,
    and its own checkpoint directory (``{seed}`` filled in, else ``DIR/seed-S``)."""
    values = dict(vars(args), seed=seed, results_file=for_seed(args.results_file, seed))
    if "seeds" in values:
        values["seeds"] = None  # as in a single run
    if args.checkpoint_dir:
        values["checkpoint_dir"] = (for_seed(args.checkpoint_dir, seed) if "{seed}" in args.checkpoint_dir
                                    else os.path.join(args.checkpoint_dir, f"seed-{seed}"))
    return argparse.Namespace(**values)
