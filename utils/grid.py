"""Run a wandb grid sweep file locally: ``python -m utils.grid SWEEP.yaml --results_dir DIR [--jobs N]
[--set KEY=VALUES ...] [--data_path PATH] [-- EXTRA FLAGS]``.

The sweep file is the one ``wandb sweep`` reads (``program``, ``method: grid``,
``parameters`` with ``value`` / ``values``, optional ``command``).  Every
combination of the parameters is one run; its command is the one a wandb agent
would build (``${args}`` renders ``--key=value``), run with this Python.

The sweep's values can be changed from the command line: ``--set KEY=VALUES``
replaces (or adds) a parameter, its values separated by commas or spaces
(``--set seed=1,2,3`` or ``--set seed=1 2 3``); ``-- EXTRA FLAGS`` appends the
flags after ``--`` to every run's command (``-- --n_epochs 1``); ``--data_path``
(or the ``FNO_CL_DATA`` environment variable) gives every run its data folder.
Flags that change what a run computes are part of its results name, so such a
grid never mixes with the full one; operational flags (``utils.flags``) are not.

A run's results file is ``DIR/<results_name(parameters)>.json``: the name is
made from the run's parameters alone, so it is known before the run starts.
The runner passes it with ``--results_file`` (every entry point of the project
takes that flag) and skips a run whose file exists.  Results are written
atomically at the very end of a run, so a run that was killed left no file and
is simply run again: the runner can be stopped and restarted at any time, and
each run ends up exactly once in DIR.  ``main.py --results_dir DIR`` names the
file with the same function, which is how wandb agents fill the same directory.

Each run also keeps a checkpoint in ``DIR/checkpoints/<name>/`` (``--checkpoint_dir ... --resume``;
the default, ``--no_checkpoints`` turns it off), so a restarted grid continues an interrupted
run from its last completed task instead of from the start; the checkpoint is deleted once the
run's results file is written.

Devices: with CUDA devices (``--gpus 0,1,2,3``, default every visible one) each run is pinned
to one device through ``CUDA_VISIBLE_DEVICES``, ``--per_gpu K`` runs per device at once
(``--jobs`` then caps the total); without devices ``--jobs N`` runs go at once on the CPU.

Seeds packed into one process (``--pack_seeds K``, main.py sweeps): the pending runs of a configuration
that differ only in their ``seed`` go to one stacked ``main.py --seeds=a,b,c`` process (utils/stacked.py),
at most K seeds each; every seed keeps its own results file, checkpoint folder and log (which names the
pack's log, ``DIR/logs/<name with seed=a+b+c>.log``), so skip-done, claims and resume stay per seed and
a pack that was interrupted may be formed again differently, or not at all.  A configuration that
``main.py --seeds`` refuses (``utils.stacked.check_stackable``: a method, head or flag it does not stack,
wandb logging) runs one process per seed, with one line saying why.  ``auto`` (the default): with CUDA
devices every pending seed of a configuration (at most 64), on the CPU a configuration's seeds shared out
over the ``--jobs`` processes (10 seeds, ``--jobs 2``: two packs of 5).

Many runners, one folder: before starting a run the runner claims it (``utils.claims``: an
atomic file create, ``DIR/<name>.claim``, with a heartbeat), so any number of runners on any
number of machines sharing DIR (NFS) run every run once; a run claimed by a live runner is
waited for, one whose runner died is taken over.  ``--slurm`` submits the pending runs as a
SLURM job array instead (``utils.slurm``).

Runs never outlive the runner: each starts in its own process group, which
the runner stops with SIGTERM when it is stopped (Ctrl-C, SIGTERM), and on
Linux the kernel also sends a run SIGTERM when the runner dies outright
(SIGKILL, a crash), so a restarted runner never finds an old run still going.
Programs that take the per-run lock (``utils.runlock``, as main.py does)
also refuse to run twice at once, whoever started them.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from utils import claims
from utils.errors import UserError
from utils.flags import DATA_PATH_ENV, canonical, results_name
from utils.results import headline

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
POLL_S = 0.1
WAIT_S = 1.0      # how often runs claimed by other runners are looked at again
STOP_GRACE_S = 10.0   # how long stopped runs get to exit cleanly before they are killed
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
RUNNER_FLAGS = ("results_file", "results_dir", "checkpoint_dir", "resume")  # the runner sets these itself
PACKED_PROGRAM = "main.py"  # the entry point that trains several seeds in one process (--seeds)
PACK_AUTO_MAX = 64          # --pack_seeds auto with CUDA devices: at most this many seeds per process


@dataclass
class GridRun:
    params: Dict[str, object]
    label: str          # the parameters that vary across the grid
    results_file: str
    log_file: str
    argv: List[str]
    checkpoint_dir: Optional[str] = None
    command: Optional[List[str]] = None  # argv without the runner's own flags (results file, checkpoints)
    program: Optional[str] = None        # the sweep's program, as it appears in argv

    @property
    def members(self) -> List["GridRun"]:
        """The runs this process runs (a pack has several)."""
        return [self]


@dataclass
class GridPack:
    """Runs that differ only in their seed, run by one ``main.py --seeds=a,b,c`` process (``make_pack``).
    Each member keeps its own results file, log and checkpoint directory."""
    members: List[GridRun]
    label: str          # the members' label with seeds=a,b,c for seed=S
    log_file: str       # the process's output; each member's log names it
    argv: List[str]


Unit = Union[GridRun, GridPack]  # what one process runs


def load_sweep(path: str) -> dict:
    import yaml
    try:
        with open(path) as f:
            sweep = yaml.safe_load(f)
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"sweep file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(sweep, dict):
        raise UserError(f"sweep file {path} must be a mapping with 'program' and 'parameters'")
    if sweep.get("method", "grid") != "grid":
        raise UserError(f"{path}: method {sweep['method']!r} needs the wandb controller; "
                        f"the local runner runs 'method: grid' only")
    for key in ("program", "parameters"):
        if key not in sweep:
            raise UserError(f"{path}: missing key {key!r}")
    if not isinstance(sweep["parameters"], dict) or not sweep["parameters"]:
        raise UserError(f"{path}: 'parameters' must be a non-empty mapping")
    return sweep


def parameter_values(path: str, sweep: dict) -> Dict[str, list]:
    """Each parameter's list of values, in file order."""
    values = {}
    for name, spec in sweep["parameters"].items():
        if isinstance(spec, dict) and "value" in spec:
            values[name] = [spec["value"]]
        elif isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
            values[name] = list(spec["values"])
        else:
            raise UserError(f"{path}: parameter {name!r} needs 'value' or a non-empty list 'values' "
                            f"for a grid (got {spec!r})")
    return values


def expand(sweep: dict, path: str = "sweep", overrides: Optional[Dict[str, list]] = None) -> List[Dict[str, object]]:
    """All combinations of the parameter values; the last parameter varies fastest, as in wandb's grid.

    ``overrides`` (``--set``) replaces a parameter's values, or adds the parameter after the sweep's."""
    values = {**parameter_values(path, sweep), **(overrides or {})}
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def _typed(text: str):
    """A value given on the command line, typed as YAML types it in a sweep file (1, 0.1, true, er)."""
    import yaml
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def parse_set(tokens: List[str]) -> Dict[str, list]:
    """``--set`` tokens -> each parameter's values.  ``KEY=V1,V2`` and ``KEY=V1 V2`` (later tokens without
    ``=`` continue the last key's values) are the same; a key may not be the runner's own flags."""
    values: Dict[str, list] = {}
    key = None
    for token in tokens:
        if "=" in token:
            key, _, text = token.partition("=")
            if not key or key.startswith("-"):
                raise UserError(f"--set needs KEY=VALUE (a parameter name without dashes), got {token!r}")
            if key in RUNNER_FLAGS:
                raise UserError(f"--set {key}: the runner sets --{key} itself (give --results_dir)")
            values[key] = []
        elif key is None:
            raise UserError(f"--set needs KEY=VALUE first, got {token!r}")
        else:
            text = token
        values[key] += [_typed(v) for v in text.split(",") if v.strip()]
    for key, given in values.items():
        if not given:
            raise UserError(f"--set {key}= has no value")
    return values


def parse_extra(tokens: List[str]) -> Dict[str, object]:
    """The flags after ``--`` as {name: value}, for the results name: ``--n_epochs 1`` and ``--n_epochs=1``
    give 1, a flag alone gives True, several values are joined by spaces (``--lr_milestones 10 20``)."""
    flags: Dict[str, list] = {}
    name = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, eq, text = token[2:].partition("=")
            if name in flags:
                raise UserError(f"extra flag --{name} is given twice")
            if name in RUNNER_FLAGS:
                raise UserError(f"extra flag --{name}: the runner sets it itself (give --results_dir)")
            flags[name] = [text] if eq else []
        elif name is None:
            raise UserError(f"extra flags after -- must start with a flag (--name), got {token!r}")
        else:
            flags[name].append(token)
    return {k: True if not v else _typed(v[0]) if len(v) == 1 else " ".join(v) for k, v in flags.items()}


def render_command(command: List[str], program: str, params: Dict[str, object],
                   interpreter: str = sys.executable) -> List[str]:
    """The argv a wandb agent would build from ``command``, with this Python as the interpreter."""
    arg_forms = {
        "args": [f"--{k}={v}" for k, v in params.items()],
        "args_no_equals": [s for k, v in params.items() for s in (f"--{k}", str(v))],
        "args_no_hyphens": [f"{k}={v}" for k, v in params.items()],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}"
                                  for k, v in params.items() if v is not False],
    }
    macros = {"env": ["/usr/bin/env"] if os.path.exists("/usr/bin/env") else [],
              "interpreter": [interpreter], "program": [program], **arg_forms}
    argv = []
    for chunk in command:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise UserError(f"unsupported sweep command macro {chunk}; supported: "
                                + ", ".join("${" + m + "}" for m in macros))
            argv += macros[chunk[2:-1]]
        else:
            argv.append(chunk)
    return argv


def plan(sweep_path: str, results_dir: str, interpreter: str = sys.executable, checkpoints: bool = False,
         overrides: Optional[Dict[str, list]] = None, extra: Optional[List[str]] = None,
         data_path: Optional[str] = None) -> List[GridRun]:
    """The runs of a sweep file, each with its command, results file, log file (and checkpoint directory).

    ``overrides``: parameter values replaced or added (``--set``); ``extra``: flags appended to every
    command (after ``--``), named in the results name unless operational; ``data_path``: every run's
    ``--data_path`` (replacing the sweep's)."""
    sweep = load_sweep(sweep_path)
    program = str(sweep["program"])
    if not os.path.exists(program):
        raise UserError(f"program {program!r} of {sweep_path} not found in {os.getcwd()} "
                        f"(run the grid from the directory wandb agents would run in: the repository root)")
    overrides = dict(overrides or {})
    if data_path is not None:
        overrides["data_path"] = [data_path]
    extra = list(extra or [])
    extra_flags = parse_extra(extra)
    combos = expand(sweep, sweep_path, overrides)
    for name in extra_flags:
        if name in combos[0]:
            raise UserError(f"extra flag --{name} is a parameter of {sweep_path}: give --set {name}=VALUE "
                            f"to change its values" + (" (or --data_path)" if name == "data_path" else ""))
    varying = [k for k in combos[0] if len({canonical(c[k]) for c in combos}) > 1]
    runs, seen = [], set()
    for params in combos:
        # The runner places results and checkpoints itself: a sweep's results_dir, checkpoint_dir and resume
        # (which wandb agents need) are replaced by its own.
        params = {k: v for k, v in params.items() if k not in RUNNER_FLAGS}
        name = results_name({**params, **extra_flags})
        if name in seen:
            raise UserError(f"{sweep_path}: two runs have the same parameters ({name})")
        seen.add(name)
        results_file = os.path.join(results_dir, name + ".json")
        command = render_command(sweep.get("command") or DEFAULT_COMMAND, program, params, interpreter) + extra
        checkpoint_dir = os.path.join(results_dir, "checkpoints", name) if checkpoints else None
        runs.append(GridRun(params, " ".join(f"{k}={params[k]}" for k in varying) or name, results_file,
                            os.path.join(results_dir, "logs", name + ".log"),
                            command + runner_flags(results_file, checkpoint_dir), checkpoint_dir, command, program))
    return runs


def runner_flags(results_file: str, checkpoint_dir: Optional[str]) -> List[str]:
    """The flags the runner adds to a command: where its results go, and its checkpoints (resumed)."""
    flags = [f"--results_file={results_file}"]
    return flags + [f"--checkpoint_dir={checkpoint_dir}", "--resume"] if checkpoint_dir else flags


# ----------------------------------------------------------------------------- seeds packed into one process

def pack_size(value: Union[str, int], on_gpus: bool, runs: List[GridRun] = (), slots: int = 1) -> int:
    """Seeds per process for ``--pack_seeds``: a number as given; ``auto``, ``PACK_AUTO_MAX`` when the runs get
    CUDA devices, else a configuration's seeds shared out over the ``slots`` processes that run at once (on 2
    cores ten MLP seeds as two processes of 5 take about twice one seed's time, one process of 10 about 2.6x,
    ten single runs two at a time 5x: docs/stacked.md)."""
    if value != "auto":
        return int(value)
    if on_gpus:
        return PACK_AUTO_MAX
    largest = max((len(group) for group in seed_groups(list(runs))), default=1)
    return max(1, min(PACK_AUTO_MAX, -(-largest // max(1, slots))))


def seed_groups(runs: List[GridRun]) -> List[List[GridRun]]:
    """The runs that differ only in their ``seed`` parameter, in plan order: lists of two runs or more."""
    groups: Dict[tuple, List[GridRun]] = {}
    for run in runs:
        if "seed" in run.params:
            key = tuple((k, canonical(v)) for k, v in run.params.items() if k != "seed")
            groups.setdefault(key, []).append(run)
    return [group for group in groups.values() if len(group) > 1]


def group_label(run: GridRun) -> str:
    """A run's label without its seed: the label of its configuration."""
    return " ".join(part for part in run.label.split(" ") if part != f"seed={run.params['seed']}")


def seeds_command(run: GridRun, seeds: list) -> List[str]:
    """The run's command with ``--seed=S`` (or ``--seed S``) replaced by ``--seeds=a,b,c``."""
    command, given, listed = list(run.command or []), str(run.params["seed"]), ",".join(map(str, seeds))
    for i, token in enumerate(command):
        if token == f"--seed={given}":
            return command[:i] + [f"--seeds={listed}"] + command[i + 1:]
        if token == "--seed" and command[i + 1:i + 2] == [given]:
            return command[:i] + ["--seeds", listed] + command[i + 2:]
    raise UserError("its command does not pass the seed as --seed=S or --seed S")


def make_pack(members: List[GridRun]) -> GridPack:
    """One ``main.py --seeds=a,b,c`` process for runs that differ only in their seed: ``--results_file`` and
    ``--checkpoint_dir`` are templates whose ``{seed}`` gives back every member's own file and folder (checked
    with ``utils.stacked.for_seed``, as main.py fills them), so each seed resumes the checkpoint it would
    resume alone.  ``UserError`` (the reason) when no template names them all (names shortened with a hash)."""
    from utils.stacked import for_seed
    first, seeds = members[0], [run.params["seed"] for run in members]
    name = os.path.basename(first.results_file)[:-len(".json")]
    seed_pair = f"seed={canonical(seeds[0])}"
    template = ",".join("seed={seed}" if pair == seed_pair else pair for pair in name.split(","))
    results_file = os.path.join(os.path.dirname(first.results_file), template + ".json")
    checkpoint_dir = first.checkpoint_dir and os.path.join(os.path.dirname(first.checkpoint_dir), template)
    for run, seed in zip(members, seeds):
        if for_seed(results_file, seed) != run.results_file or for_seed(checkpoint_dir, seed) != run.checkpoint_dir:
            raise UserError(f"its results names ({name}) cannot be written as one {{seed}} template "
                            f"(shortened with a hash)")
    argv = seeds_command(first, seeds) + runner_flags(results_file, checkpoint_dir)
    label = " ".join(filter(None, [group_label(first), "seeds=" + ",".join(map(str, seeds))]))
    log_file = os.path.join(os.path.dirname(first.log_file), for_seed(template, "+".join(map(str, seeds))) + ".log")
    return GridPack(list(members), label, log_file, argv)


def pack_refusal(members: List[GridRun]) -> Optional[str]:
    """Why these runs cannot go to one process (``None``: they can), decided here as main.py would decide it:
    the packed command parsed by ``utils.args.parse_args`` and checked by ``utils.stacked.check_stackable``."""
    try:
        pack = make_pack(members)
    except UserError as exc:
        return str(exc)
    from utils.args import parse_args
    from utils.stacked import check_stackable
    argv = pack.argv[pack.argv.index(members[0].program) + 1:]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            args = parse_args(argv)
        check_stackable(args, args.seeds)
    except SystemExit:
        lines = said.getvalue().strip().splitlines() or ["main.py refused the packed command"]
        return lines[-1].replace(f"{PACKED_PROGRAM}: error: ", "")
    except UserError as exc:
        return str(exc)
    return None


def packable(runs: List[GridRun], pack_seeds: int, out) -> Dict[str, int]:
    """Which runs may be packed: {results file: its configuration's number}, for the configurations with two
    pending seeds or more whose packed command main.py accepts; one line is printed per refused one."""
    groups = seed_groups(runs) if pack_seeds > 1 else []
    if not groups:
        return {}
    program = groups[0][0].program or ""
    if os.path.basename(program) != PACKED_PROGRAM:
        print(f"seeds not packed: {program} takes no --seeds (only {PACKED_PROGRAM} does); one process per run",
              file=out, flush=True)
        return {}
    chosen = {}
    for number, group in enumerate(groups):
        why = pack_refusal(group[:pack_seeds])
        if why:
            print(f"seeds not packed for {group_label(group[0]) or 'the grid'} (one process per seed): {why}",
                  file=out, flush=True)
            continue
        chosen.update((run.results_file, number) for run in group)
    return chosen


def form_packs(pending: List[GridRun], groups: Dict[str, int], pack_seeds: int) -> List[Unit]:
    """The processes for ``pending`` without claims (``--dry_run``, ``--slurm``): the runs of a packable
    configuration in packs of at most ``pack_seeds``, in plan order; a pack of one is the run itself."""
    units, taken = [], set()
    for run in pending:
        if run.results_file in taken:
            continue
        same = [r for r in pending if r.results_file not in taken and run.results_file in groups
                and groups.get(r.results_file) == groups[run.results_file]][:pack_seeds] or [run]
        taken.update(r.results_file for r in same)
        units.append(same[0] if len(same) == 1 else make_pack(same))
    return units


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
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
            with open(run.log_file, mode) as log:
                log.write(command + f"seed {run.params['seed']} runs in one process with seeds {seeds}; "
                                    f"its output: {unit.log_file}\n")
    os.makedirs(os.path.dirname(unit.log_file), exist_ok=True)
    log = open(unit.log_file, mode)
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
        import torch
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


def claim_run(run: GridRun, pending: List[GridRun], timeout_s: float) -> tuple:
    """Claim a pending run (``utils.claims``): (its ``Claim``, False), the run taken off ``pending``;
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

    Each run is claimed first (``utils.claims``): a run claimed by a live runner elsewhere is waited for,
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
                        status = f"FAILED ({why}) {run.label}: {_log_tail(unit.log_file)}  [log: {unit.log_file}]"
                    elapsed = time.monotonic() - start
                    eta = elapsed / finished * (len(pending) + sum(len(v[0].members) for v in running.values()))
                    print(f"[{done_before + elsewhere + finished:>{len(str(total))}}/{total}] {status}  "
                          f"(elapsed {_clock(elapsed)}, left ~{_clock(eta)})", file=out, flush=True)
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class OneLineParser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2 (as main.py's; utils.cli's would import torch)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def pack_seeds_value(text: str) -> Union[str, int]:
    """``--pack_seeds``: ``auto`` or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1 (1: no packing), got {text!r}")
    return value


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:  # everything after -- goes to every run
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    p = OneLineParser(prog="python -m utils.grid", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s SWEEP --results_dir DIR [options] [-- EXTRA FLAGS]",
                                epilog="-- EXTRA FLAGS: flags appended to every run's command, e.g. -- --n_epochs 1; "
                                       "they are part of the results name unless operational (utils/flags.py)")
    p.add_argument("sweep", help="a wandb sweep file with method: grid (e.g. sweeps/seq-digits.yaml)")
    p.add_argument("--results_dir", required=True, help="where the results files (and logs/) go")
    p.add_argument("--jobs", type=int, help="runs at once (default: 1 without CUDA devices; with devices, "
                                             "--per_gpu per device, and --jobs caps the total)")
    p.add_argument("--gpus", help="CUDA devices to pin runs to, e.g. 0,1,2,3 (default: every visible device; "
                                  "'none': no pinning); each run gets CUDA_VISIBLE_DEVICES=<its device>")
    p.add_argument("--per_gpu", type=int, default=1, help="runs at once on each device (default 1)")
    p.add_argument("--pack_seeds", type=pack_seeds_value, default="auto", metavar="{auto,K}",
                   help=f"main.py sweeps: run up to K pending seeds of a configuration (runs that differ only in "
                        f"their seed) as one stacked main.py --seeds process, each seed keeping its own results "
                        f"file, checkpoint and log; configurations main.py cannot stack run one process per seed "
                        f"(one line says why). auto (default): with CUDA devices all of a configuration's pending "
                        f"seeds (at most {PACK_AUTO_MAX}); on the CPU a configuration's pending seeds shared out "
                        f"over the --jobs processes (10 seeds, --jobs 2: packs of 5; on 2 cores ten MLP seeds "
                        f"then take ~2x one seed's time, against 5x as single runs). 1: no packing (e.g. ResNet "
                        f"grids on a CPU, where grouped convolutions are slower than separate ones)")
    p.add_argument("--checkpoints", action="store_true", default=True,
                   help="(the default) checkpoint each run after every task (under DIR/checkpoints) and resume "
                        "interrupted runs from there on restart; the program must take --checkpoint_dir and --resume")
    p.add_argument("--no_checkpoints", dest="checkpoints", action="store_false",
                   help="no checkpoints: an interrupted run starts over")
    p.add_argument("--claim_timeout", type=float, default=claims.CLAIM_TIMEOUT_S,
                   help=f"seconds without a heartbeat after which another host's claim on a run is taken over "
                        f"(default {claims.CLAIM_TIMEOUT_S:g})")
    p.add_argument("--slurm", action="store_true",
                   help="submit the pending runs as one SLURM job array through submitit (utils/slurm.py) "
                        "instead of running them here")
    p.add_argument("--slurm_partition", help="SLURM partition")
    p.add_argument("--slurm_gpus_per_task", type=int, default=1, help="GPUs per array task (default 1)")
    p.add_argument("--slurm_array_parallelism", type=int, default=32, help="array tasks at once (default 32)")
    p.add_argument("--slurm_time", type=int, default=24 * 60, help="minutes per task (default 1440)")
    p.add_argument("--slurm_local", action="store_true",
                   help="run the array with submitit's local executor on this machine (a test of the SLURM path)")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUES",
                   help="replace (or add) a sweep parameter's values, separated by commas or spaces: "
                        "--set seed=1,2,3 or --set seed=1 2 3 (repeatable)")
    p.add_argument("--data_path", help=f"every run's --data_path (default: ${DATA_PATH_ENV}, else the sweep's "
                                       f"or the program's)")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the runs still to do and exit")
    args = p.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.per_gpu < 1:
        p.error(f"--per_gpu must be at least 1, got {args.per_gpu}")
    data_path = args.data_path if args.data_path is not None else os.environ.get(DATA_PATH_ENV) or None
    try:
        overrides = parse_set([token for group in args.set for token in group])
        runs = plan(args.sweep, args.results_dir, checkpoints=args.checkpoints, overrides=overrides,
                    extra=extra, data_path=data_path)
    except UserError as exc:
        print(f"utils.grid: error: {exc}", file=sys.stderr)
        return 2
    if args.slurm and not args.slurm_local:
        gpus, on_gpus = [], args.slurm_gpus_per_task > 0  # each array task has GPUs of its own
    else:
        gpus = chosen_devices(args.gpus)
        on_gpus = bool(gpus)
    slots = device_slots(gpus, args.per_gpu, args.jobs)
    pack_seeds = pack_size(args.pack_seeds, on_gpus, [run for run in runs if not os.path.exists(run.results_file)],
                           1 if args.slurm or args.slurm_local else len(slots))
    if args.dry_run:
        pending = [run for run in runs if not os.path.exists(run.results_file)]
        for unit in form_packs(pending, packable(pending, pack_seeds, sys.stderr), pack_seeds):
            print(" ".join(unit.argv))
        return 0
    if data_path is not None and args.data_path is None:
        print(f"--data_path {data_path} (from ${DATA_PATH_ENV})", flush=True)
    if args.slurm or args.slurm_local:
        from utils import slurm
        return slurm.submit(runs, args, out=sys.stdout, pack_seeds=pack_seeds)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stopped like Ctrl-C: the runs are stopped too
    try:
        return 1 if run_grid(runs, slots=slots, claim_timeout_s=args.claim_timeout, pack_seeds=pack_seeds) else 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
