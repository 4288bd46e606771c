"""``python -m utils.grid SWEEP.yaml --results_dir DIR --slurm``: the pending runs as one SLURM job array.

submitit (an optional extra: ``pip install -e ".[slurm]"``) submits one array
task per run still to do (no results file, no live claim), with
``--slurm_partition``, ``--slurm_gpus_per_task``, ``--slurm_array_parallelism``
and ``--slurm_time`` (minutes).  Each task runs the run's command, the same as
the local runner's (``--checkpoint_dir ... --resume`` included unless
``--no_checkpoints``), and writes the output to the run's log.  A task that is
preempted or reaches its time limit is requeued by submitit (``checkpoint``
returns the same task): the requeued task runs the same command, which resumes
from the run's checkpoint.  ``--slurm_local`` runs the array through submitit's
local executor on this machine and waits for it (how the tests exercise this path).

The jobs' own files (submitit's pickles and logs) go to ``DIR/slurm/``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List

from utils import claims
from utils.errors import UserError


class GridTask:
    """One run as a submitit task: its command, run to completion, its output to the run's log."""

    def __init__(self, argv: List[str], results_file: str, log_file: str, checkpoint_dir=None, env=None):
        self.argv, self.results_file, self.log_file = list(argv), results_file, log_file
        self.checkpoint_dir, self.env = checkpoint_dir, dict(env or {})

    def __call__(self) -> str:
        if os.path.exists(self.results_file):
            return f"already done: {self.results_file}"
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        with open(self.log_file, "a") as log:
            log.write(" ".join(self.argv) + "\n")
            log.flush()
            code = subprocess.call(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        if code != 0 or not os.path.exists(self.results_file):
            raise RuntimeError(f"run failed (exit {code}), see {self.log_file}")
        if self.checkpoint_dir:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        return f"done: {self.results_file}"

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or timeout: requeue the same task, which resumes the run
        from its checkpoint (its command has ``--checkpoint_dir ... --resume``)."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


def executor(folder: str, args, local: bool):
    try:
        import submitit
    except ImportError:
        raise UserError('--slurm needs submitit: pip install -e ".[slurm]"') from None
    if local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=args.slurm_time)
        return ex
    ex = submitit.AutoExecutor(folder=folder)
    if ex.cluster != "slurm":
        raise UserError("--slurm: no SLURM cluster here (sbatch not found); --slurm_local runs the array on this "
                        "machine through submitit's local executor")
    params = dict(timeout_min=args.slurm_time, gpus_per_node=args.slurm_gpus_per_task, tasks_per_node=1,
                  nodes=1, slurm_array_parallelism=args.slurm_array_parallelism, name="fno-cl-grid")
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    ex.update_parameters(**params)
    return ex


def submit(runs, args, out=None) -> int:
    """Submit the pending runs as one job array; with ``--slurm_local`` also wait for it.
    Returns the exit code (0; 1 when a local task failed; 2 on a usage error)."""
    out = out or sys.stdout
    pending = [r for r in runs if not os.path.exists(r.results_file)
               and not os.path.exists(claims.claim_path(r.results_file))]
    print(f"{len(runs)} runs, {len(runs) - len(pending)} done or claimed, {len(pending)} to submit", file=out, flush=True)
    if not pending:
        return 0
    folder = os.path.join(os.path.dirname(pending[0].results_file), "slurm", "%j")
    try:
        ex = executor(folder, args, getattr(args, "slurm_local", False))
    except UserError as exc:
        print(f"utils.grid: error: {exc}", file=sys.stderr)
        return 2
    tasks = [GridTask(r.argv, r.results_file, r.log_file, r.checkpoint_dir) for r in pending]
    jobs = ex.submit_array(tasks)
    print(f"submitted {len(jobs)} task(s) as job array {jobs[0].job_id.split('_')[0]} (submitit files in "
          f"{os.path.dirname(folder)})", file=out, flush=True)
    if not getattr(args, "slurm_local", False):
        return 0
    failed = 0
    for run, job in zip(pending, jobs):
        try:
            print(f"  {job.result()}", file=out, flush=True)
        except Exception:  # submitit's FailedJobError: the task raised, the run's log says why
            from utils.grid import _log_tail
            failed += 1
            print(f"  FAILED {run.label}: {_log_tail(run.log_file)}  [log: {run.log_file}]", file=out, flush=True)
    print(f"all {len(pending)} submitted runs done" if not failed else f"{failed} run(s) failed", file=out, flush=True)
    return 1 if failed else 0
