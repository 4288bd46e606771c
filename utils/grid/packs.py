"""Seeds packed into one process (``--pack_seeds``): the pending runs of a configuration that differ only in
their seed run as one stacked ``main.py --seeds`` process, each seed keeping its own results file, claim,
checkpoint and log; a configuration ``main.py`` refuses to stack (checked in-process) runs one process per
seed."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Union

from utils.errors import UserError
from utils.flags import canonical
from utils.grid.check import refusal
from utils.grid.runs import GridPack, GridRun, Unit
from utils.grid.sweep import runner_flags
from utils.seeds import for_seed
from utils.stacked.trainer import check_stackable

PACKED_PROGRAM = "main.py"  # the entry point that trains several seeds in one process (--seeds)
PACK_AUTO_MAX = 64          # --pack_seeds auto with CUDA devices: at most this many seeds per process


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
    with ``utils.seeds.for_seed``, as main.py fills them), so each seed resumes the checkpoint it would
    resume alone.  ``UserError`` (the reason) when no template names them all (names shortened with a hash)."""
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
    if members[0].program not in pack.argv:
        return "the sweep's command does not name its program (${program})"
    why, args = refusal(PACKED_PROGRAM, pack.argv[pack.argv.index(members[0].program) + 1:])
    if why is not None:
        return why
    try:
        check_stackable(args, args.seeds)
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
