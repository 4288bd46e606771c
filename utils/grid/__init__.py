"""Run a wandb grid sweep file locally: ``python -m utils.grid SWEEP.yaml --results_dir DIR [--jobs N]
[--set KEY=VALUES ...] [--data_path PATH] [-- EXTRA FLAGS]``.

The sweep file is the one ``wandb sweep`` reads (``program``, ``method: grid``,
``parameters`` with ``value`` / ``values``, optional ``command``).  Every
combination of the parameters is one run; its command is the one a wandb agent
would build (``${args}`` renders ``--key=value``), run with this Python.
A sweep file is data (it may sit in a shared folder): one whose ``program`` is
outside this repository, or whose ``command`` holds a word that is neither a
``${...}`` macro nor a ``--flag``, runs only with ``--any_program``
(``--dry_run`` prints what it would run).  Aliases, duplicate keys, values
that are not numbers, words or true/false, and grids of more than
``sweep.MAX_RUNS`` combinations are refused before anything is expanded.

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
that differ only in their ``seed`` go to one stacked ``main.py --seeds=a,b,c`` process (``utils.stacked``),
at most K seeds each; every seed keeps its own results file, checkpoint folder and log (which names the
pack's log, ``DIR/logs/<name with seed=a+b+c>.log``), so skip-done, claims and resume stay per seed and
a pack that was interrupted may be formed again differently, or not at all.  A configuration that
``main.py --seeds`` refuses (``utils.stacked.check_stackable``: a method, head or flag it does not stack,
wandb logging) runs one process per seed, with one line saying why.  ``auto`` (the default): with CUDA
devices every pending seed of a configuration (at most 64), on the CPU a configuration's seeds shared out
over the ``--jobs`` processes (10 seeds, ``--jobs 2``: two packs of 5).

Many runners, one folder: before starting a run the runner claims it (``utils.grid.claims``: an
atomic file create, ``DIR/<name>.claim``, with a heartbeat), so any number of runners on any
number of machines sharing DIR (NFS) run every run once; a run claimed by a live runner is
waited for, one whose runner died is taken over.  ``--slurm`` submits the pending runs as a
SLURM job array instead (``utils.grid.slurm``).

Runs never outlive the runner: each starts in its own process group, which
the runner stops with SIGTERM when it is stopped (Ctrl-C, SIGTERM), and on
Linux the kernel also sends a run SIGTERM when the runner dies outright
(SIGKILL, a crash), so a restarted runner never finds an old run still going.
Programs that take the per-run lock (``utils.runlock``, as main.py does)
also refuse to run twice at once, whoever started them.

The package: ``sweep`` (sweep files, the plan of runs and their commands), ``packs`` (seeds packed into
one process), ``processes`` (starting, watching and stopping run processes, devices, logs), ``local``
(the local runner), ``claims`` (one runner per run across machines), ``slurm`` (the job array) and
``cli`` (this command).  No run imports this package: it starts runs as processes.
"""
