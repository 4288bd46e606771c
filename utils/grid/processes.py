"""The runs' processes: starting one (its log, environment and process group, tied to the runner's life),
what its exit means, stopping them all, and the CUDA devices runs are pinned to."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from utils.grid.runs import GridPack, GridRun, Unit
from utils.io import open_created

STOP_GRACE_S = 10.0   # how long stopped runs get to exit cleanly before they are killed
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def log_tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def child_environment(jobs: int) -> dict:
    """Unbuffered output for the logs; with several jobs, the CPU threads shared out unless set by the user."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def die_with_runner() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when the runner dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``, kept across exec); ``None`` where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    runner = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != runner:  # the runner died before the prctl: no signal would come
            os._exit(143)
    return preexec


def open_log(unit: Unit):
    """The process's log, opened for its output after its command (appended to when the runs resume from
    checkpoints); a pack's members' logs each get the command and a line naming the pack's log."""
    mode = "a" if any(run.checkpoint_dir for run in unit.members) else "w"
    command = " ".join(unit.argv) + "\n"
    if isinstance(unit, GridPack):
        seeds = ",".join(str(run.params["seed"]) for run in unit.members)
        for run in unit.members:
            os.makedirs(os.path.dirname(run.log_file), exist_ok=True)
            with open_created(run.log_file, append=mode == "a") as log:
                log.write(command + f"seed {run.params['seed']} runs in one process with seeds {seeds}; "
                                    f"its output: {unit.log_file}\n")
    os.makedirs(os.path.dirname(unit.log_file), exist_ok=True)
    log = open_created(unit.log_file, append=mode == "a")  # never through a link planted in the folder
    log.write(command)
    log.flush()
    return log


def start_run(unit: Unit, env: dict):
    """Start one process (a run, or a pack of runs), its output going to its log; returns (process, open log)."""
    log = open_log(unit)
    try:
        # Own session and process group: a Ctrl-C reaches the runner only, which stops the group (stop_runs).
        proc = subprocess.Popen(unit.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=die_with_runner())
    except BaseException:
        log.close()
        raise
    return proc, log


def finished_status(run: GridRun, returncode: int) -> Optional[str]:
    """After the process of a run (or of its pack) ended: ``None`` when the run's results file exists (written
    atomically, so complete; its checkpoint is then deleted), else why it failed."""
    if os.path.exists(run.results_file):
        if run.checkpoint_dir:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        return None
    return f"exit {returncode}" if returncode != 0 else "exit 0 but no results file"


def visible_devices() -> List[str]:
    """The CUDA devices runs may use: ``CUDA_VISIBLE_DEVICES`` when set, else every device torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def chosen_devices(given: Optional[str]) -> List[str]:
    """``--gpus``: the devices listed (``none``: no pinning), by default every visible one."""
    if given is None:
        return visible_devices()
    if given.strip().lower() in ("none", ""):
        return []
    return [g.strip() for g in given.split(",") if g.strip()]


def device_slots(gpus: List[str], per_gpu: int = 1, jobs: Optional[int] = None) -> List[Optional[str]]:
    """One entry per run that may go at once: the device it is pinned to (``None``: no pinning, the CPU).

    With devices, ``per_gpu`` runs per device, spread over the devices first (0,1,0,1); ``jobs`` caps the
    total.  Without devices, ``jobs`` runs (default 1)."""
    if not gpus:
        return [None] * (jobs or 1)
    slots = [g for _ in range(per_gpu) for g in gpus]
    return slots[:jobs] if jobs else slots


def left_behind(run: GridRun) -> str:
    """What a stopped run left, for the report (called once its process has ended)."""
    if os.path.exists(run.results_file):
        if run.checkpoint_dir:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        return f"finished while stopping, results written ({run.results_file})"
    kept = run.checkpoint_dir and os.path.isdir(run.checkpoint_dir) and any(
        not name.startswith(".") for name in os.listdir(run.checkpoint_dir))
    if kept:
        return f"interrupted, checkpoint kept ({run.checkpoint_dir}): the next start resumes it"
    return "interrupted, nothing written: the next start runs it from the beginning"


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Signal the run's process group (the run and anything it started), unless the run was reaped."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop_runs(running: Dict[subprocess.Popen, tuple], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each running process's group (main.py then stops cleanly, keeping its checkpoint),
    wait up to ``grace_s``, SIGKILL what is left, and close the logs."""
    for proc in running:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc, (run, log, *_) in running.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        log.close()
