"""What an entry point does around its experiment, the same for ``main.py`` and ``main_lt.py``.

``run_entry`` maps SIGTERM (wandb agents, schedulers, the grid runner) to
KeyboardInterrupt, so the trainer stops cleanly and keeps its checkpoint;
checks that every output location is writable before the first step; holds the
per-run lock (``utils.runlock``) while the run lasts; prints the headline once
and writes the results atomically; removes the output folders a failed run
created and left empty.  Bad input is one line on stderr and exit
code 2, an interruption exit code 130.  With ``--seeds`` (several seeds in one
stacked process) every seed's outputs are those of its single run
(``utils.seeds.seed_args``): each is checked, locked and written the same way.

Only the process that writes (rank 0 under torchrun, ``writes=True``) checks,
locks and writes: the other processes of a job share its files.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Callable, Optional

from utils import io  # its functions are looked up at call time, so that tests can simulate a full disk
from utils.errors import UserError
from utils.flags import OPERATIONAL_FLAGS, canonical
from utils.guards import batch_norm_needs_two
from utils.io import absent_folders, check_writable_dir, check_writable_file, discards, remove_empty_folders
from utils.runlock import run_lock
from utils.seeds import seed_args


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def check_outputs(args) -> None:
    """Every output location is writable before the first step, not after the last one."""
    if args.results_file:
        check_writable_file(args.results_file, "--results_file")
    if args.checkpoint_dir:
        check_writable_dir(args.checkpoint_dir, "--checkpoint_dir")


def save_results(args, results: dict) -> None:
    """Write the results file; a failure is one line saying what was kept.  NaN or infinite numbers (JSON
    has none) are written as null and named in one line: the finished run is kept, never lost to them."""
    finite, replaced = io.finite_only(results)
    if replaced:
        print(f"warning: not finite, written as null: {', '.join(replaced[:5])}"
              + (f" and {len(replaced) - 5} more" if len(replaced) > 5 else ""), file=sys.stderr, flush=True)
    try:
        io.write_json_atomic(args.results_file, finite)
    except (OSError, ValueError, TypeError) as exc:
        keep = (f"the checkpoint in {args.checkpoint_dir} keeps the finished run: rerun the same command with "
                f"--resume and another --results_file to write them" if args.checkpoint_dir else
                "the final accuracies are printed above; add --checkpoint_dir to keep a run whose results "
                "cannot be written")
        raise UserError(f"could not write the results to {args.results_file}: "
                        f"{getattr(exc, 'strerror', None) or exc}; {keep}") from None


def output_runs(args) -> list:
    """The runs whose outputs a command writes: one, or with ``--seeds`` each seed's single run."""
    seeds = getattr(args, "seeds", None)
    return [seed_args(args, seed) for seed in seeds] if seeds else [args]


def created_folders(runs: list) -> list:
    """The folders the runs' outputs would create (they do not exist yet), deepest first."""
    folders = []
    for one in runs:
        if one.results_file:
            folders += absent_folders(os.path.dirname(os.path.abspath(one.results_file)))
        if one.checkpoint_dir:
            folders += absent_folders(one.checkpoint_dir)
    return folders


NOT_IDENTITY = OPERATIONAL_FLAGS | {"seeds", "model_name", "load_best_args"}  # how a run was asked, not what


def finished(one) -> bool:
    """Whether a run's results file is there and no checkpoint of it is left (a run deletes its checkpoint
    once its results are written; both there is a state the resume checks deal with)."""
    busy = one.checkpoint_dir and os.path.isdir(one.checkpoint_dir) and os.listdir(one.checkpoint_dir)
    return bool(one.results_file and os.path.isfile(one.results_file) and not busy)


def other_run(one) -> Optional[str]:
    """Why the existing results file of ``one`` is not this run's (``None``: it is): another run's
    arguments, or not a results file.  Flags a file lacks (written before they existed) are not compared."""
    try:
        with open(one.results_file, encoding="utf-8") as f:
            written = json.load(f).get("args")
    except (OSError, ValueError, AttributeError):
        written = None
    if not isinstance(written, dict):
        return "it is not a results file"
    ours = vars(one)
    differing = [f"--{k} {canonical(ours[k])} (the file's: {canonical(written[k])})" for k in sorted(ours)
                 if k not in NOT_IDENTITY and k in written and canonical(written[k]) != canonical(ours[k])]
    return f"it holds another run's results: {', '.join(differing)}" if differing else None


def already_finished(prog: str, runs: list) -> Optional[int]:
    """The exit code of a command whose results files exist (``None``: go ahead): results are never
    overwritten silently.  This run's, all there: it is finished, said in one line, exit 0.  Another run's,
    or some of a --seeds process's: one line naming them, exit 2."""
    done = [one for one in runs if finished(one)]
    if not done:
        return None
    for one in done:
        why = other_run(one)
        if why:
            print(f"{prog}: error: {os.path.abspath(one.results_file)} exists and {why}; give another "
                  f"--results_file, or --overwrite 1 to replace it", file=sys.stderr)
            return 2
    first = os.path.abspath(done[0].results_file)
    more = f" (and {len(done) - 1} more)" if len(done) > 1 else ""
    if len(done) == len(runs):
        print(f"results exist: {first}{more}: this configuration is finished, not run again (--overwrite 1 runs "
              f"it again and replaces them)", flush=True)
        return 0
    print(f"{prog}: error: {len(done)} of the {len(runs)} seeds' results exist ({first}{more}): give --seeds "
          f"with the others only, or --overwrite 1", file=sys.stderr)
    return 2


def run_entry(prog: str, args, experiment: Callable[[object], Optional[object]],
              headline: Callable[[object, dict], str], writes: bool = True) -> int:
    """Run ``experiment(args)`` as a command: the exit code (0, 2: bad input, 130: interrupted).

    ``experiment`` returns the results (with ``--seeds``: a list, one per seed), or ``None`` in a process
    that does not write them; ``headline(args, results)`` is the one line printed for a run at the end.
    The folders a failed run created for its outputs are removed again if left empty.
    """
    runs = output_runs(args) if writes else []
    code = None if getattr(args, "overwrite", 0) else already_finished(prog, runs)
    if code is not None:
        return code
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    created = created_folders(runs)
    try:
        for one in runs:
            check_outputs(one)
        places = [place for one in runs for place in (one.results_file, one.checkpoint_dir)]
        with run_lock(*[place for place in places if place and not discards(place)]):  # /dev/null: no lock
            with batch_norm_needs_two(args):
                results = experiment(args)  # one process per run, or a one-line refusal
            if results is not None:
                several = len(runs) > 1 or getattr(args, "seeds", None)
                for one, result in zip(runs, results if several else [results]):
                    print((f"seed {one.seed}: " if several else "") + headline(one, result), flush=True)
                    if one.results_file and discards(one.results_file):
                        print(f"Results discarded (--results_file {one.results_file})", flush=True)
                    elif one.results_file:
                        save_results(one, result)
                        print(f"Results written to {os.path.abspath(one.results_file)}", flush=True)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_empty_folders(created)
    return 0
