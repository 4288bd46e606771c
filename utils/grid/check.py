"""The grid checks before it launches: every planned run's command is parsed and resolved in-process, as its
program would parse it, so a run that would fail at start-up (a method without best arguments, a flag of
another method, a bad value) is found before anything starts or any SLURM job is submitted."""
from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Dict, List, Optional

from utils.args import parse_args as parse_continual
from utils.grid.runs import GridRun

# The programs whose parser a tool may import (the long-tail trainer is not a tool's layer: main_lt.py sweeps
# are checked by main_lt.py itself, at each run's start).
PARSERS: Dict[str, Callable] = {"main.py": parse_continual}


def refusal(program: str, argv: List[str]):
    """``(why, args)``: the one-line error ``program`` gives for ``argv`` (``why`` ``None`` and the resolved
    arguments when it accepts them; ``(None, None)`` for a program this check does not know)."""
    parse = PARSERS.get(os.path.basename(program or ""))
    if parse is None:
        return None, None
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            return None, parse(argv)
    except SystemExit:
        lines = said.getvalue().strip().splitlines() or [f"{program} refused the command"]
        return lines[-1].split(": error: ", 1)[-1], None


def run_argv(run: GridRun) -> List[str]:
    """The arguments the run's program receives (its command after the program)."""
    argv = list(run.argv)
    return argv[argv.index(run.program) + 1:] if run.program in argv else argv


def check_runs(runs: List[GridRun]) -> Dict[str, List[GridRun]]:
    """The runs whose program refuses its command, by distinct reason (in plan order)."""
    refused: Dict[str, List[GridRun]] = {}
    for run in runs:
        why, _ = refusal(run.program, run_argv(run))
        if why is not None:
            refused.setdefault(why, []).append(run)
    return refused


def report_refusals(refused: Dict[str, List[GridRun]], total: int, skip_invalid: bool, out) -> None:
    """One line per distinct reason with the number of runs it affects, then what the grid does."""
    for why, runs in refused.items():
        example = f" (e.g. {runs[0].label})" if len(runs) > 1 else f" ({runs[0].label})"
        print(f"{len(runs)} of {total} runs refused{example}: {why}", file=out, flush=True)
    n = sum(len(runs) for runs in refused.values())
    print(f"running the other {total - n} runs (--skip_invalid)" if skip_invalid else
          f"nothing launched: fix the sweep, or give --skip_invalid to run the other {total - n}", file=out,
          flush=True)


def valid_runs(runs: List[GridRun], pending: List[GridRun], skip_invalid: bool, out) -> Optional[List[GridRun]]:
    """``runs`` less the pending ones their program refuses; ``None`` (launch nothing) when some are refused
    and ``skip_invalid`` is off.  Each distinct refusal is reported once."""
    refused = check_runs(pending)
    if not refused:
        return runs
    report_refusals(refused, len(pending), skip_invalid, out)
    if not skip_invalid:
        return None
    bad = {run.results_file for group in refused.values() for run in group}
    return [run for run in runs if run.results_file not in bad]

