"""The flags every entry point takes, defined once: seed, device, data and output places, checkpoints, wandb.

``add_run_flags`` adds them to a parser (an experiment-specific flag can join
the returned "run" group); ``resolve_run_flags`` settles them after the
command line, the presets and the defaults have been merged.  The names are
the ones ``utils.flags``, the grid runner and ``utils.wandb_logger`` read.
"""
from __future__ import annotations

import argparse
import os

from utils.cli import binary, seed, switch
from utils.devices import resolve_device
from utils.flags import DATA_PATH_ENV, fill_name, results_name

RUN_DEFAULTS = {
    "seed": 0, "device": None, "data_path": "data", "results_file": None, "results_dir": None,
    "checkpoint_dir": None, "resume": False, "overwrite": 0,
    "nowand": 0, "wandb_project": None, "wandb_entity": None, "wandb_name": None,
}


def add_run_flags(parser: argparse.ArgumentParser, stage: str, results_help: str = "write the results here as JSON "
                  "(atomically)", results_metavar: str = "PATH") -> argparse._ArgumentGroup:
    """Add the shared flags; ``stage`` names what a checkpoint follows ("task", "epoch"), ``results_help`` and
    ``results_metavar`` say what ``--results_file`` takes and its default.  Returns the "run" group (an entry
    point's own run flags join it)."""
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=seed, metavar="INT", help="seed of every random stream (default 0)")
    r.add_argument("--device", metavar="{cpu,cuda,cuda:N}", help="default: cuda when available")
    r.add_argument("--data_path", metavar="DIR",
                   help=f"where datasets live / are downloaded (default: ${DATA_PATH_ENV}, else ./data)")
    r.add_argument("--results_file", metavar=results_metavar, help=results_help)
    r.add_argument("--results_dir", metavar="DIR", help="write the results as JSON into this directory, the file "
                   "named from the flags given (as the grid runner names it; for wandb sweep agents)")
    r.add_argument("--checkpoint_dir", metavar="DIR", help=f"save a checkpoint here after every {stage} (atomically); "
                   "{name} in it is replaced by the run's results name (sweep files: each run its own folder)")
    r.add_argument("--resume", type=switch, nargs="?", const=True, metavar="{0,1}",
                   help=f"continue from the last {stage} saved in --checkpoint_dir (a fresh start when there is none)")
    r.add_argument("--overwrite", type=binary, metavar="{0,1}",
                   help="1: run again and replace an existing results file; 0 (default): a run whose results "
                        "file exists is finished, so it says so and exits 0 (as the grid runner skips it)")
    w = parser.add_argument_group("wandb (on when a project is given, by flag or WANDB_PROJECT)")
    w.add_argument("--nowand", type=binary, metavar="{0,1}", help="1 disables wandb logging")
    w.add_argument("--wandb_project", metavar="NAME", help="wandb project (default: $WANDB_PROJECT; none: no logging)")
    w.add_argument("--wandb_entity", metavar="NAME", help="wandb entity (user or team)")
    w.add_argument("--wandb_name", metavar="NAME", help="wandb run name (default: wandb's)")
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


def resolve_shared_flags(values: dict, explicit: dict) -> None:
    """Settle what every entry point settles the same way: the device checked and named, the data folder from
    ``$FNO_CL_DATA`` when none was given (as the grid runner takes it), ``--resume`` only with a checkpoint
    directory.  Raises ``ValueError`` (the parser's one-line error)."""
    for name in ("results_file", "results_dir", "checkpoint_dir", "data_path"):
        if explicit.get(name) == "":  # an unset shell variable: say so rather than write nowhere or to ./
            raise ValueError(f"--{name} is empty; give a path" + (f" (or {os.devnull} to write no results)"
                                                                  if name == "results_file" else ""))
    values["device"] = str(resolve_device(values.get("device")))
    if "data_path" not in explicit and os.environ.get(DATA_PATH_ENV):  # a cluster's data folder
        values["data_path"] = os.environ[DATA_PATH_ENV]
    if values["resume"] and not values["checkpoint_dir"]:
        raise ValueError("--resume needs --checkpoint_dir (the directory holding the checkpoint)")


def resolve_run_flags(values: dict, explicit: dict) -> None:
    """Settle the shared flags in ``values`` (merged settings) given the ``explicit`` command-line ones:
    the device checked and named, the data folder from ``$FNO_CL_DATA`` when none was given (as the grid
    runner takes it), ``--resume`` only with a checkpoint directory, ``--results_dir`` turned into the
    results file, ``{name}`` in ``--checkpoint_dir`` replaced by the run's results name.  Raises ``ValueError``
    (the parser's one-line error)."""
    resolve_shared_flags(values, explicit)
    if str(values["results_file"]).lower() == "none":  # as main.py: no results file, not one called "none"
        values["results_file"] = None
    values["checkpoint_dir"] = fill_name(values["checkpoint_dir"], results_name(explicit))
    if values["results_dir"] is not None:
        if "results_file" in explicit:
            raise ValueError("give either --results_file or --results_dir, not both")
        values["results_file"] = os.path.join(values["results_dir"], results_name(explicit) + ".json")
