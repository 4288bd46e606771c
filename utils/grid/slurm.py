"""``python -m utils.grid SWEEP.yaml --results_dir DIR --slurm``: the pending runs as one SLURM job array.

submitit (an optional extra: ``pip install -e ".[slurm]"``) submits one array
task per process still to do, with ``--slurm_partition``, ``--slurm_gpus_per_task``,
``--slurm_array_parallelism`` and ``--slurm_time`` (minutes).  A process is a run
still to do (no results file, no live claim), or a pack of such runs of one
configuration that differ only in their seed (``--pack_seeds``, ``utils.grid.packs.make_pack``:
one stacked ``main.py --seeds`` process; ``auto`` packs when the tasks have GPUs).
Each task runs the same command as the local runner (``--checkpoint_dir ... --resume``
included unless ``--no_checkpoints``: a pack's with a ``{seed}`` template, so each
seed has its own checkpoint) and writes the output to its log.  A task that is
preempted or reaches its time limit is requeued by submitit (``checkpoint``
returns the same task): the requeued task runs the same command, which resumes
every run (every seed of a pack) from its own checkpoint.  ``--slurm_local`` runs
the array through submitit's local executor on this machine and waits for it (how
the tests exercise this path).

The jobs' own files (submitit's pickles and logs) go to ``DIR/slurm/``.
"""
from __future__ import annotations

import os
import subprocess
import sys

from utils.errors import UserError
from utils.grid import claims
from utils.grid.packs import form_packs, packable
from utils.grid.processes import finished_status, log_tail, open_log


class GridTask:
    """One process as a submitit task: a run (``utils.grid.runs.GridRun``) or a pack of runs (``GridPack``), its
    command run to completion, its output to its log."""

    def __init__(self, unit, env=None):
        self.unit, self.env = unit, dict(env or {})

    def __call__(self) -> str:
        members = self.unit.members
        if all(os.path.exists(run.results_file) for run in members):
            return "already done: " + ", ".join(run.results_file for run in members)
        with open_log(self.unit) as log:
            code = subprocess.call(self.unit.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        failed = [run.label for run in members if finished_status(run, code) is not None]  # done: checkpoint removed
        if failed:
            raise RuntimeError(f"exit {code}, no results for {'; '.join(failed)}, see {self.unit.log_file}")
        return "done: " + ", ".join(run.results_file for run in members)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or timeout: requeue the same task, which resumes every run from
        its own checkpoint (its command has ``--checkpoint_dir ... --resume``; a pack's holds ``{seed}``)."""
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


def submit(runs, args, out=None, pack_seeds: int = 1) -> int:
    """Submit the pending runs as one job array, one task per run or pack of at most ``pack_seeds`` seeds;
    with ``--slurm_local`` also wait for it.  Returns the exit code (0; 1 when a local task failed; 2 on a
    usage error)."""
    out = out or sys.stdout
    pending = [r for r in runs if not os.path.exists(r.results_file)
               and not os.path.exists(claims.claim_path(r.results_file))]
    print(f"{len(runs)} runs, {len(runs) - len(pending)} done or claimed, {len(pending)} to submit", file=out, flush=True)
    if not pending:
        return 0
    units = form_packs(pending, packable(pending, pack_seeds, out), pack_seeds)
    folder = os.path.join(os.path.dirname(pending[0].results_file), "slurm", "%j")
    try:
        ex = executor(folder, args, getattr(args, "slurm_local", False))
    except UserError as exc:
        print(f"utils.grid: error: {exc}", file=sys.stderr)
        return 2
    jobs = ex.submit_array([GridTask(unit) for unit in units])
    print(f"submitted {len(jobs)} task(s) as job array {jobs[0].job_id.split('_')[0]} (submitit files in "
          f"{os.path.dirname(folder)})", file=out, flush=True)
    if not getattr(args, "slurm_local", False):
        return 0
    failed = 0
    for unit, job in zip(units, jobs):
        try:
            print(f"  {job.result()}", file=out, flush=True)
        except Exception:  # submitit's FailedJobError: the task raised, the log says why
            lost = [run for run in unit.members if not os.path.exists(run.results_file)]
            failed += len(lost)
            print(f"  FAILED {'; '.join(run.label for run in lost)}: {log_tail(unit.log_file)}  "
                  f"[log: {unit.log_file}]", file=out, flush=True)
    print(f"all {len(pending)} submitted runs done" if not failed else f"{failed} run(s) failed", file=out, flush=True)
    return 1 if failed else 0
