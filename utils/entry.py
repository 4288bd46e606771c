"""What an entry point does around its experiment, the same for ``main.py`` and ``main_lt.py``.

``run_entry`` maps SIGTERM (wandb agents, schedulers, the grid runner) to
KeyboardInterrupt, so the trainer stops cleanly and keeps its checkpoint;
checks that every output location is writable before the first step; holds the
per-run lock (``utils.runlock``) while the run lasts; prints the headline once
and writes the results atomically; removes the results folders a failed run
created and left empty.  Bad input is one line on stderr and exit
code 2, an interruption exit code 130.

Only the process that writes (rank 0 under torchrun, ``writes=True``) checks,
locks and writes: the other processes of a job share its files.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Optional

from utils.errors import UserError


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def check_outputs(args) -> None:
    """Every output location is writable before the first step, not after the last one."""
    from utils.io import check_writable_dir, check_writable_file
    if args.results_file:
        check_writable_file(args.results_file, "--results_file")
    if args.checkpoint_dir:
        check_writable_dir(args.checkpoint_dir, "--checkpoint_dir")


def save_results(args, results: dict) -> None:
    """Write the results file; a failure is one line saying what was kept."""
    from utils import io  # looked up at call time, so that tests can simulate a full disk
    try:
        io.write_json_atomic(args.results_file, results)
    except OSError as exc:
        keep = (f"the checkpoint in {args.checkpoint_dir} keeps the finished run: rerun the same command with "
                f"--resume and another --results_file to write them" if args.checkpoint_dir else
                "the final accuracies are printed above; add --checkpoint_dir to keep a run whose results "
                "cannot be written")
        raise UserError(f"could not write the results to {args.results_file}: {exc.strerror or exc}; {keep}") from None


def run_entry(prog: str, args, experiment: Callable[[object], Optional[dict]],
              headline: Callable[[object, dict], str], writes: bool = True) -> int:
    """Run ``experiment(args)`` as a command: the exit code (0, 2: bad input, 130: interrupted).

    ``experiment`` returns the results, or ``None`` in a process that does not
    write them; ``headline(args, results)`` is the one line printed at the end.
    The folders a failed run created for its results file are removed again if left empty.
    """
    from datasets.utils import absent_folders, remove_empty_folders
    from utils.runlock import run_lock
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    created = absent_folders(os.path.dirname(os.path.abspath(args.results_file))) if writes and args.results_file else []
    try:
        if writes:
            check_outputs(args)
        places = (args.results_file, args.checkpoint_dir) if writes else ()
        with run_lock(*places):  # one process per run, or a one-line refusal
            results = experiment(args)
            if results is not None:
                print(headline(args, results), flush=True)
                if args.results_file:
                    save_results(args, results)
                    print(f"Results written to {os.path.abspath(args.results_file)}")
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
