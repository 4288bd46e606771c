"""Checkpoints after every task (``--checkpoint_dir``) and resuming from the last one (``--resume``).

A checkpoint holds everything the rest of the run depends on: the model's
state (the network with the FNO matrix, which is a buffer, and any extra
state a method keeps), the optimizer and scheduler, the replay buffer, the
state of every random generator (data order, augmentation, buffer draws and
the global Python / NumPy / torch ones), the per-task results so far, and the
logger's position.  Resuming a run killed at any moment therefore replays the
interrupted task from exactly the same state, and on the CPU ends with the same
accuracies as an uninterrupted run.

The file is written atomically (temporary file, fsync, rename) with SIGINT and
SIGTERM held back until the write is complete, so a kill leaves either the
previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import random
import signal
import threading
from typing import Optional

import numpy as np
import torch

from utils.errors import UserError
from utils.io import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
# Flags that may differ between a run and its resumption: where files are, and logging.
MAY_CHANGE_ON_RESUME = frozenset({
    "resume", "checkpoint_dir", "results_file", "results_dir", "data_path",
    "nowand", "wandb_project", "wandb_entity", "wandb_name",
})


def checkpoint_path(directory: str) -> str:
    return os.path.join(directory, CHECKPOINT_FILE)


def run_identity(args) -> dict:
    """The flags that must be equal for a checkpoint to be resumed."""
    return {k: v for k, v in vars(args).items() if k not in MAY_CHANGE_ON_RESUME}


def differing_flags(saved: dict, current: dict) -> list:
    """``--flag value (checkpoint: saved)`` for every flag whose value differs."""
    return [f"--{k} {current.get(k)} (checkpoint: {saved.get(k)})"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


@contextlib.contextmanager
def signals_held(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold back ``signums`` inside the block, then deliver the first one that arrived to the usual handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _generators(run) -> dict:
    return {"data_order": run.data_generator, "augmentation": run.augment_generator,
            "buffer": run.model.setting.buffer_generator}


def capture_rng(run) -> dict:
    """The state of every random stream the run draws from, in plain containers and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.device(run.args.device).type == "cuda" else None}
    state.update({name: gen.get_state() for name, gen in _generators(run).items()})
    return state


def restore_rng(run, state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in _generators(run).items():
        gen.set_state(state[name])


def save_checkpoint(directory: str, run, history: dict, logger_state: dict) -> None:
    """Write the checkpoint of a run whose ``history['stages_done']`` stages are complete."""
    model = run.model
    state = {
        "format": FORMAT_VERSION,
        "args": run_identity(run.args),
        "history": history,
        "model": model.state_dict(),
        "optimizer": model.opt.state_dict() if model.opt is not None else None,
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "buffer": model.buffer.state_dict() if model.buffer is not None else None,
        "rng": capture_rng(run),
        "logger": logger_state,
    }
    data = io.BytesIO()
    torch.save(state, data)
    with signals_held():
        atomic_write_bytes(checkpoint_path(directory), data.getvalue())


def load_checkpoint(args) -> Optional[dict]:
    """The checkpoint in ``args.checkpoint_dir``, checked against ``args``; ``None`` when there is none.

    Without ``--resume`` an existing checkpoint is an error rather than being
    overwritten.  Temporary files left by a write that was killed are removed.
    """
    directory = args.checkpoint_dir
    for stale in glob.glob(os.path.join(glob.escape(directory), f".{CHECKPOINT_FILE}.*.tmp")):
        os.unlink(stale)
    path = checkpoint_path(directory)
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path} is not a checkpoint of this version (format {FORMAT_VERSION})")
    done = state["history"]["stages_done"]
    if not args.resume:
        raise UserError(f"--checkpoint_dir {directory} already holds a checkpoint ({done} task(s) done): "
                        f"add --resume to continue it, or choose another directory")
    differ = differing_flags(state["args"], run_identity(args))
    if differ:
        raise UserError(f"--resume: {path} was saved by a run with other arguments: " + ", ".join(differ))
    return state


def restore_run(run, state: dict) -> None:
    """Put the run back in the state saved after its last completed task."""
    model = run.model
    model.load_state_dict(state["model"])
    if model.buffer is not None:
        model.buffer.load_state_dict(state["buffer"])
    if state["optimizer"] is not None:
        model.opt = model.build_optimizer()
        model.opt.load_state_dict(state["optimizer"])
        run.scheduler = run.dataset.get_scheduler(model.opt, run.args)
        if state["scheduler"] is not None:
            run.scheduler.load_state_dict(state["scheduler"])
    restore_rng(run, state["rng"])
