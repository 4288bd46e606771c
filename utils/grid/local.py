"""The local runner: every pending run (or pack) claimed, started on a free slot, watched and reported, until
all are done; a restarted runner skips finished runs and resumes interrupted ones."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from utils.grid import claims
from utils.grid.packs import make_pack, packable
from utils.grid.processes import (child_environment, clock, finished_status, left_behind, log_tail, start_run,
                                  stop_runs)
from utils.grid.runs import GridRun
from utils.summarize.results import headline

POLL_S = 0.1
WAIT_S = 1.0      # how often runs claimed by other runners are looked at again


def claim_run(run: GridRun, pending: List[GridRun], timeout_s: float) -> tuple:
    """Claim a pending run (``utils.grid.claims``): (its ``Claim``, False), the run taken off ``pending``;
    (None, True) when its results file exists (done elsewhere: taken off too); (None, False) when a live
    runner holds it (looked at again later)."""
    if os.path.exists(run.results_file):
        pending.remove(run)
        return None, True
    claim = claims.try_claim(run.results_file, timeout_s)
    if claim is None:
        return None, False
    pending.remove(run)
    if os.path.exists(run.results_file):  # finished by another runner since we looked
        claim.release()
        return None, True
    return claim, False


def run_grid(runs: List[GridRun], jobs: int = 1, out=None, slots: Optional[List[Optional[str]]] = None,
             claim_timeout_s: float = claims.CLAIM_TIMEOUT_S, pack_seeds: int = 1) -> int:
    """Run the runs whose results file does not exist yet, one process per slot (``jobs`` unpinned slots by
    default, or ``slots``: each the CUDA device its process is pinned to); return the number that failed here.

    Each run is claimed first (``utils.grid.claims``): a run claimed by a live runner elsewhere is waited for,
    one whose runner is gone is taken over, so runners sharing the results folder run each run once.
    With ``pack_seeds`` > 1, a run of a configuration main.py stacks (``packable``) goes to one process with
    the other pending seeds of its configuration that this runner can claim, at most ``pack_seeds``.
    However this ends (KeyboardInterrupt, which SIGTERM is mapped to, or any error), the processes still
    going are stopped first, what each run left is printed and the claims are released.
    """
    out = out or sys.stdout
    slots = list(slots) if slots else [None] * jobs
    pending = [r for r in runs if not os.path.exists(r.results_file)]
    total, done_before = len(runs), len(runs) - len(pending)
    where = ", ".join(f"device {d}" for d in dict.fromkeys(slots)) if slots[0] is not None else "no device pinning"
    print(f"{total} runs, {done_before} already done, {len(pending)} to run, {len(slots)} at a time ({where})",
          file=out, flush=True)
    groups = packable(pending, pack_seeds, out)
    if groups:
        print(f"seeds packed: up to {pack_seeds} of a configuration in one process (--pack_seeds)", file=out, flush=True)
    base_env = child_environment(len(slots))
    running: Dict[subprocess.Popen, tuple] = {}  # process -> (unit, log, start time, claims, slot)
    failed: List[str] = []
    finished = elsewhere = 0
    start = last_beat = time.monotonic()
    waiting_said = False
    try:
        while pending or running:
            free = [s for s in range(len(slots)) if s not in {v[4] for v in running.values()}]
            taken = set()  # results files of the runs a pack took off pending in this pass
            for run in list(pending):
                if not free:
                    break
                if run.results_file in taken:
                    continue
                claim, done = claim_run(run, pending, claim_timeout_s)
                elsewhere += done
                if claim is None:
                    continue
                members, held = [run], [claim]
                # A pack: the other pending seeds of the run's configuration that this runner can claim.
                for other in list(pending) if run.results_file in groups else []:
                    if len(members) == pack_seeds:
                        break
                    if groups.get(other.results_file) == groups[run.results_file]:
                        claim, done = claim_run(other, pending, claim_timeout_s)
                        elsewhere += done
                        if claim is not None or done:
                            taken.add(other.results_file)
                        if claim is not None:
                            members.append(other)
                            held.append(claim)
                slot = free.pop(0)
                env = dict(base_env)
                if slots[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slots[slot]
                try:
                    unit = members[0] if len(members) == 1 else make_pack(members)
                    proc, log = start_run(unit, env)
                except BaseException:
                    for claim in held:
                        claim.release()
                    raise
                running[proc] = (unit, log, time.monotonic(), held, slot)
                on = f" on device {slots[slot]}" if slots[slot] is not None else ""
                print(f"{'':>{2 * len(str(total)) + 3}} start {unit.label}{on}", file=out, flush=True)
            if time.monotonic() - last_beat > claims.HEARTBEAT_S:
                for value in running.values():
                    for claim in value[3]:
                        claim.heartbeat()
                last_beat = time.monotonic()
            exited = [p for p in running if p.poll() is not None]
            if not exited:
                if pending and not running and not waiting_said:
                    print(f"waiting for {len(pending)} run(s) claimed by other runners", file=out, flush=True)
                    waiting_said = True
                time.sleep(POLL_S if running else WAIT_S)
                continue
            for proc in exited:
                unit, log, began, held, _ = running.pop(proc)
                log.close()
                took = time.monotonic() - began
                statuses = [(run, finished_status(run, proc.returncode)) for run in unit.members]
                for claim in held:
                    claim.release()
                for run, why in statuses:
                    finished += 1
                    if why is None:
                        status = f"done  {run.label}  {took:.1f}s  {headline(run.results_file)}"
                    else:
                        failed.append(run.label)
                        status = f"FAILED ({why}) {run.label}: {log_tail(unit.log_file)}  [log: {unit.log_file}]"
                    elapsed = time.monotonic() - start
                    eta = elapsed / finished * (len(pending) + sum(len(v[0].members) for v in running.values()))
                    print(f"[{done_before + elsewhere + finished:>{len(str(total))}}/{total}] {status}  "
                          f"(elapsed {clock(elapsed)}, left ~{clock(eta)})", file=out, flush=True)
    except BaseException as exc:
        stop_runs(running)
        stopped = sum(len(value[0].members) for value in running.values())
        if running or isinstance(exc, KeyboardInterrupt):
            print(f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'stopping on an error'}: "
                  f"stopped {stopped} running run(s); rerun the same command to continue", file=out, flush=True)
        for unit, _, _, held, _ in running.values():
            for run in unit.members:
                print(f"  {run.label}: {left_behind(run)}", file=out, flush=True)
            for claim in held:
                claim.release()
        raise
    if elsewhere:
        print(f"{elsewhere} run(s) were done by other runners", file=out, flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed (their logs are in {os.path.dirname(runs[0].log_file)}): "
              + "; ".join(failed), file=out, flush=True)
    else:
        print(f"all {total} runs done", file=out, flush=True)
    return len(failed)
