"""``python -m utils.grid``: the command line of the grid runner (see the package's docstring)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Union

from utils.cli import OneLineParser, positive
from utils.errors import UserError
from utils.flags import DATA_PATH_ENV
from utils.grid import claims, slurm
from utils.grid.check import valid_runs
from utils.grid.local import run_grid
from utils.grid.packs import PACK_AUTO_MAX, form_packs, pack_size, packable
from utils.grid.processes import chosen_devices, device_slots
from utils.grid.sweep import parse_set, plan, untrusted

DESCRIPTION = ("Run a wandb grid sweep file locally: python -m utils.grid SWEEP.yaml --results_dir DIR [--jobs N] "
               "[--set KEY=VALUES ...] [--data_path PATH] [-- EXTRA FLAGS].")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


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
    p = OneLineParser(prog="python -m utils.grid", description=DESCRIPTION,
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
    p.add_argument("--claim_timeout", type=positive(float), default=claims.CLAIM_TIMEOUT_S,
                   help=f"seconds without a heartbeat after which another host's claim on a run is taken over "
                        f"(default {claims.CLAIM_TIMEOUT_S:g})")
    p.add_argument("--slurm", action="store_true",
                   help="submit the pending runs as one SLURM job array through submitit (utils/grid/slurm.py) "
                        "instead of running them here")
    p.add_argument("--slurm_partition", help="SLURM partition")
    p.add_argument("--slurm_gpus_per_task", type=int, default=1, help="GPUs per array task (default 1)")
    p.add_argument("--slurm_array_parallelism", type=int, default=32, help="array tasks at once (default 32)")
    p.add_argument("--slurm_time", type=positive(int), default=24 * 60, help="minutes per task (default 1440)")
    p.add_argument("--slurm_local", action="store_true",
                   help="run the array with submitit's local executor on this machine (a test of the SLURM path)")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUES",
                   help="replace (or add) a sweep parameter's values, separated by commas or spaces: "
                        "--set seed=1,2,3 or --set seed=1 2 3 (repeatable)")
    p.add_argument("--data_path", help=f"every run's --data_path (default: ${DATA_PATH_ENV}, else the sweep's "
                                       f"or the program's)")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the runs still to do and exit")
    p.add_argument("--skip_invalid", action="store_true",
                   help="every pending run's command is first parsed as its program would parse it; by default one "
                        "refused run stops the grid before anything starts (one line per distinct error); with "
                        "--skip_invalid the other runs go ahead")
    p.add_argument("--any_program", action="store_true",
                   help="run a sweep whose program is outside this repository or whose command holds words other "
                        "than ${...} macros and --flags (check them first with --dry_run)")
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
        why = None if args.any_program or args.dry_run else untrusted(args.sweep)
        if why:
            raise UserError(f"{args.sweep}: {why}; see what it would run with --dry_run and pass --any_program "
                            f"to run it")
    except UserError as exc:
        print(f"utils.grid: error: {exc}", file=sys.stderr)
        return 2
    valid = valid_runs(runs, [run for run in runs if not os.path.exists(run.results_file)], args.skip_invalid,
                       sys.stderr)
    if valid is None and not args.dry_run:
        return 2
    runs = runs if valid is None else valid  # a dry run that refuses still shows every command
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
        if valid is None:  # refused (said above): every command as it stands, unpacked
            for run in pending:
                print(" ".join(run.argv))
            return 2
        for unit in form_packs(pending, packable(pending, pack_seeds, sys.stderr), pack_seeds):
            print(" ".join(unit.argv))
        return 0
    if data_path is not None and args.data_path is None:
        print(f"--data_path {data_path} (from ${DATA_PATH_ENV})", flush=True)
    if args.slurm or args.slurm_local:
        return slurm.submit(runs, args, out=sys.stdout, pack_seeds=pack_seeds)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stopped like Ctrl-C: the runs are stopped too
    try:
        return 1 if run_grid(runs, slots=slots, claim_timeout_s=args.claim_timeout, pack_seeds=pack_seeds) else 0
    except (UserError, OSError) as exc:  # a planted link or FIFO in the folder, a full disk, a file for a folder
        print(f"utils.grid: error: {getattr(exc, 'strerror', None) or exc}"
              + (f": {exc.filename}" if getattr(exc, "filename", None) else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
