"""The flags every entry point takes, defined once: seed, device, data and output places, checkpoints, wandb.

``add_run_flags`` adds them to a parser (an experiment-specific flag can join
the returned "run" group); ``resolve_run_flags`` settles them after the
command line, the presets and the defaults have been merged.  The names are
the ones ``utils.flags``, the grid runner and ``utils.wandb_logger`` read.
"""
from __future__ import annotations

import argparse
import os

from utils.cli import binary, resolve_device, seed, switch
from utils.flags import results_name

RUN_DEFAULTS = {
    "seed": 0, "device": None, "data_path": "data", "results_file": None, "results_dir": None,
    "checkpoint_dir": None, "resume": False,
    "nowand": 0, "wandb_project": None, "wandb_entity": None, "wandb_name": None,
}


def add_run_flags(parser: argparse.ArgumentParser, stage: str) -> argparse._ArgumentGroup:
    """Add the shared flags; ``stage`` names what a checkpoint follows ("task", "epoch").  Returns the
    "run" group."""
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=seed, help="seed of every random stream (default 0)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    r.add_argument("--data_path", help="where datasets live / are downloaded (default ./data)")
    r.add_argument("--results_file", help="write the results here as JSON (atomically)")
    r.add_argument("--results_dir", help="write the results as JSON into this directory, the file named from "
                   "the flags given (as the grid runner names it; for wandb sweep agents)")
    r.add_argument("--checkpoint_dir", help=f"save a checkpoint here after every {stage} (atomically)")
    r.add_argument("--resume", type=switch, nargs="?", const=True,
                   help=f"continue from the last {stage} saved in --checkpoint_dir (a fresh start when there is none)")
    w = parser.add_argument_group("wandb (on when a project is given, by flag or WANDB_PROJECT)")
    w.add_argument("--nowand", type=binary, help="1 disables wandb logging")
    w.add_argument("--wandb_project", help="wandb project (default: $WANDB_PROJECT; none: no logging)")
    w.add_argument("--wandb_entity", help="wandb entity (user or team)")
    w.add_argument("--wandb_name", help="wandb run name (default: wandb's)")
    return r


def parse_command_line(parser: argparse.ArgumentParser, argv: list, resolve) -> argparse.Namespace:
    """Parse ``argv`` and ``resolve`` the result into the run's settings; a ``ValueError`` from ``resolve``
    is the parser's one-line error (exit code 2), like a bad value."""
    ns = parser.parse_args(argv)
    try:
        return resolve(ns)
    except ValueError as exc:
        parser.error(str(exc))


def given_flags(ns: argparse.Namespace, required: dict) -> dict:
    """The flags given on the command line (every parser default is ``None``); a ``required`` one
    (name -> its valid choices) that is missing is a ``ValueError`` listing the choices."""
    given = {k: v for k, v in vars(ns).items() if v is not None}
    for name, choices in required.items():
        if name not in given:
            raise ValueError(f"--{name} is required (valid choices: {', '.join(choices)})")
    return given


def resolve_run_flags(values: dict, explicit: dict) -> None:
    """Settle the shared flags in ``values`` (merged settings) given the ``explicit`` command-line ones:
    the device checked and named, ``--resume`` only with a checkpoint directory, ``--results_dir`` turned
    into the results file.  Raises ``ValueError`` (the parser's one-line error)."""
    values["device"] = str(resolve_device(values.get("device")))
    if values["resume"] and not values["checkpoint_dir"]:
        raise ValueError("--resume needs --checkpoint_dir (the directory holding the checkpoint)")
    if values["results_dir"] is not None:
        if "results_file" in explicit:
            raise ValueError("give either --results_file or --results_dir, not both")
        values["results_file"] = os.path.join(values["results_dir"], results_name(explicit) + ".json")
