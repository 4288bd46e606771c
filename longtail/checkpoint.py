"""The long-tail trainer's checkpoint (``--checkpoint_dir``, ``--checkpoint_every``) and resuming from it.

Everything the rest of a run depends on: the network (batch-norm statistics
and the fixed FNO / ETF matrix included), the SGD state, the scheduler's
epoch, the GradScaler (``--amp fp16``), the per-epoch results so far, the
wandb logger's position, and the state of every random stream of every
process - data order, augmentation, mixing pairs and coefficients (or the
DataLoader's generator), and the global ones.  A run resumed from the
checkpoint of epoch e therefore trains epoch e + 1 from exactly the state the
uninterrupted run had, and on the CPU ends with the same results, bit for bit.

The file, its atomic write with signals held and every check that turns a
damaged file into one line are the core's (``utils.checkpoint``).  Under
torchrun every process hands its random streams to rank 0 (a collective at
each save), which alone writes; every process reads the file on resume and
takes its own streams back.
"""
from __future__ import annotations

from typing import Optional

from longtail.processes import gather
from longtail.schedule import is_evaluated, make_optimizer, make_scheduler
from utils.amp import grad_scaler
from utils.checkpoint import (FORMAT_VERSION, CheckpointError, capture_rng, check_rng, check_state_dict,
                              checkpoint_path, few, find_checkpoint, is_int, is_number, load_state, restore_rng,
                              run_identity, show, write_checkpoint)
from utils.flags import MAY_CHANGE_ON_RESUME

TRAINER = "long-tail"
STATE_KEYS = frozenset({"format", "trainer", "args", "world_size", "history", "model", "optimizer", "scheduler",
                        "scaler", "rng", "logger"})
HISTORY_KEYS = frozenset({"stages_done", "evaluated", "hits", "counts", "train_loss", "lr", "wall_time_s"})
# How often a run checkpoints does not change what it computes.
FREE_FLAGS = MAY_CHANGE_ON_RESUME | {"checkpoint_every"}


def generators(run) -> dict:
    """This process's own random streams, by name."""
    return {**run.data.train.generators(), **run.method.generators()}


def save_checkpoint(directory: str, run, history: dict, logger_state: dict) -> None:
    """Write the checkpoint of a run whose ``history['stages_done']`` epochs are complete (rank 0 writes;
    every process must call this, for the random streams it contributes)."""
    rng = gather(run.procs, capture_rng(run.device, generators(run)))
    if not run.procs.main:
        return
    write_checkpoint(directory, {
        "format": FORMAT_VERSION,
        "trainer": TRAINER,
        "args": run_identity(run.args, FREE_FLAGS),
        "world_size": run.procs.world,
        "history": history,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": rng,
        "logger": logger_state,
    })


def _short(epochs: list) -> str:
    return str(epochs) if len(epochs) <= 6 else f"[{epochs[0]}, {epochs[1]}, ..., {epochs[-1]}]"


def _check_history(path: str, run, history) -> None:
    """The per-epoch results: no more epochs than the run has, evaluated where ``--eval_every`` says,
    one row of per-class hits per evaluated epoch."""
    if not isinstance(history, dict) or not HISTORY_KEYS <= set(history):
        missing = HISTORY_KEYS - set(history) if isinstance(history, dict) else ["history"]
        raise CheckpointError(path, f"its history of completed epochs lacks {few(missing)}")
    args, k = run.args, run.dataset.NUM_CLASSES
    done = history["stages_done"]
    if not is_int(done) or not 0 <= done <= args.n_epochs:
        raise CheckpointError(path, f"it claims {show(done)} completed epoch(s), but this run has {args.n_epochs}")
    expected = [e for e in range(1, done + 1) if is_evaluated(args, e)]
    if not (isinstance(history["evaluated"], list) and history["evaluated"] == expected):
        raise CheckpointError(path, f"history: evaluated is not the epochs {_short(expected)} that --eval_every "
                                    f"{args.eval_every} evaluates")
    hits, counts = history["hits"], history["counts"]
    row = lambda r: isinstance(r, list) and len(r) == k and all(is_number(v) for v in r)
    if not (isinstance(hits, list) and len(hits) == len(expected) and all(row(r) for r in hits)
            and (row(counts) if expected else counts is None)):
        raise CheckpointError(path, f"history: hits and counts are not {len(expected)} and 1 row(s) of "
                                    f"{k} numbers (counts: none before the first evaluation)")
    for key in ("train_loss", "lr"):
        if not (is_number(history[key]) if done else history[key] is None):
            raise CheckpointError(path, f"history: {key} is {show(history[key])}, not the last epoch's")
    if not is_number(history["wall_time_s"]) or history["wall_time_s"] < 0:
        raise CheckpointError(path, f"history: wall_time_s is {show(history['wall_time_s'])}, not a duration "
                                    f"in seconds")


def restore_run(run, state: dict) -> None:
    """Put the run back in the state saved after its last completed epoch.

    Everything is checked against the built run first (processes, epochs,
    network, optimizer, scheduler, scaler, generators): a checkpoint that does
    not fit raises ``CheckpointError`` and leaves the run untouched.
    """
    path, procs, args = checkpoint_path(run.args.checkpoint_dir), run.procs, run.args
    if not (is_int(state["world_size"]) and state["world_size"] == procs.world):
        raise CheckpointError(path, f"it was saved by {show(state['world_size'])} process(es), this run has "
                                    f"{procs.world}: resume with as many torchrun processes")
    _check_history(path, run, state["history"])
    check_state_dict(path, run.model.state_dict(), state["model"], "model",
                     "another --method, --backbone or --width")
    rng = state["rng"]
    if not (isinstance(rng, list) and len(rng) == procs.world):
        raise CheckpointError(path, f"its random-generator states are not one per process ({procs.world})")
    check_rng(path, run.device, generators(run), rng[procs.rank])
    optimizer = make_optimizer(run.model, args)
    scheduler = make_scheduler(optimizer, args)
    load_state(path, "optimizer", optimizer, state["optimizer"])
    load_state(path, "scheduler", scheduler, state["scheduler"])
    scaler = grad_scaler(args.amp)
    if (scaler is None) != (state["scaler"] is None):
        raise CheckpointError(path, "its GradScaler state does not fit this run's --amp")
    if scaler is not None:
        load_state(path, "GradScaler", scaler, state["scaler"])
    run.model.load_state_dict(state["model"])
    run.optimizer, run.scheduler, run.scaler = optimizer, scheduler, scaler
    restore_rng(run.device, generators(run), rng[procs.rank])


def find_saved(args) -> Optional[dict]:
    """The checkpoint in ``args.checkpoint_dir``, checked against ``args``; ``None`` when there is none
    (``utils.checkpoint.find_checkpoint``); ``restore_run`` checks the rest."""
    return find_checkpoint(args, TRAINER, STATE_KEYS, "epoch", run_identity(args, FREE_FLAGS))
