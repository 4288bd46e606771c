"""Checkpoints: the machinery both trainers share, and the continual trainer's checkpoint after every task.

Shared (``main.py`` and ``main_lt.py``): the file is written atomically
(temporary file, fsync, rename) with SIGINT and SIGTERM held back until the
write is complete, so a kill leaves either the previous checkpoint or the new
one, never a torn file (``write_checkpoint``).  Reading never runs code from
the file (``torch.load(..., weights_only=True)``; a file that is not a zip
written by ``torch.save`` is refused before it is unpickled), and a damaged or
foreign file raises ``CheckpointError``: one line naming the file, what is
wrong and what to do (``find_checkpoint``).  The state of every random stream
- the global Python / NumPy / torch ones and a run's own torch and NumPy
generators - is captured and restored (``capture_rng``, ``restore_rng``), and
checked on throwaway generators first (``check_rng``), as are model,
optimizer and scheduler states (``check_state_dict``, ``load_state``).

The continual trainer's checkpoint (``save_checkpoint``, ``load_checkpoint``,
``restore_run``) holds everything the rest of the run depends on: the model's
state (the network with the FNO matrix, which is a buffer, and any extra
state a method keeps), the optimizer and scheduler, the replay buffer, the
state of every random generator (data order, augmentation, buffer draws and
the global ones), the per-task results so far, and the logger's position.
Resuming a run killed at any moment therefore replays the interrupted task
from exactly the same state, and on the CPU ends with the same accuracies as
an uninterrupted run.  Every part is checked against the built run before
anything is restored, so a checkpoint that does not fit leaves the run as it
was.  The long-tail trainer's checkpoint is ``longtail.checkpoint``.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import math
import os
import pickle
import random
import signal
import threading
import zipfile
from typing import Callable, Optional

import numpy as np
import torch

from utils.errors import UserError
from utils.flags import MAY_CHANGE_ON_RESUME
from utils.io import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
# Which program wrote a checkpoint ("trainer" in the file; files without it predate the key: continual).
PROGRAMS = {"continual": "main.py (continual learning)", "long-tail": "main_lt.py (long-tailed classification)"}


def checkpoint_path(directory: str) -> str:
    return os.path.join(directory, CHECKPOINT_FILE)


def run_identity(args, free=MAY_CHANGE_ON_RESUME) -> dict:
    """The flags that must be equal for a checkpoint to be resumed (all but the ``free`` ones)."""
    return {k: v for k, v in vars(args).items() if k not in free}


def differing_flags(saved: dict, current: dict) -> list:
    """``--flag value (checkpoint: saved)`` for every flag whose value differs."""
    shown = {"model_name": "model"}  # the --model as typed (an alias) is kept as model_name, not a flag
    return [f"--{shown.get(k, k)} {current.get(k)} (checkpoint: {saved.get(k)})"
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


def write_checkpoint(directory: str, state: dict) -> None:
    """Serialise ``state`` and replace the checkpoint file atomically, with SIGINT / SIGTERM held back."""
    data = io.BytesIO()
    torch.save(state, data)
    with signals_held():
        atomic_write_bytes(checkpoint_path(directory), data.getvalue())


# ----------------------------------------------------------------------------- random streams

def _generator_state(gen):
    """A torch generator's state (a uint8 tensor) or a NumPy ``Generator``'s (a dict of plain values)."""
    return gen.bit_generator.state if isinstance(gen, np.random.Generator) else gen.get_state()


def _set_generator_state(gen, state) -> None:
    if isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
    else:
        gen.set_state(state)


def capture_rng(device: torch.device, generators: dict) -> dict:
    """The state of the global streams and of ``generators`` (name -> torch or NumPy generator),
    in plain containers and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
    state.update({name: _generator_state(gen) for name, gen in generators.items()})
    return state


def restore_rng(device: torch.device, generators: dict, state: dict) -> None:
    """Put the streams back as ``capture_rng`` found them (check the state with ``check_rng`` first)."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        _set_generator_state(gen, state[name])


def _numpy_state(saved):
    kind, keys, pos, has_gauss, gauss = saved
    return kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss


def _throwaway_like(gen):
    """A new generator of the same kind as ``gen``, to try a stored state on."""
    if isinstance(gen, np.random.Generator):
        return np.random.Generator(type(gen.bit_generator)())
    return torch.Generator(device=gen.device)


def check_rng(path: str, device: torch.device, generators: dict, saved) -> None:
    """Every stored state is loaded into a new, throwaway generator of the same kind."""
    expected = GLOBAL_RNG_KEYS | set(generators)
    if not isinstance(saved, dict) or not expected <= set(saved):
        missing = expected - set(saved) if isinstance(saved, dict) else ["rng"]
        raise CheckpointError(path, f"its random-generator states lack {few(missing)}")
    on_cuda = device.type == "cuda"
    if (saved["cuda"] is None) == on_cuda or not (saved["cuda"] is None or isinstance(saved["cuda"], (list, tuple))):
        raise CheckpointError(path, "its CUDA generator states do not fit this run's --device")
    trials = [("python", saved["python"], lambda s: random.Random().setstate(s)),
              ("numpy", saved["numpy"], lambda s: np.random.RandomState().set_state(_numpy_state(s))),
              ("torch", saved["torch"], lambda s: torch.Generator().set_state(s))]
    trials += [(name, saved[name], lambda s, g=gen: _set_generator_state(_throwaway_like(g), s))
               for name, gen in generators.items()]
    trials += [(f"cuda:{i}", s, lambda s, i=i: torch.Generator(device=f"cuda:{i}").set_state(s))
               for i, s in enumerate(saved["cuda"] or [])]
    for name, state, load in trials:
        try:
            load(state)
        except Exception as exc:
            raise CheckpointError(path, f"its state of the {name!r} random generator is invalid "
                                        f"({_one_line(exc)})") from None


# ----------------------------------------------------------------------------- reading and checking

class CheckpointError(UserError):
    """A checkpoint that cannot be resumed; the one-line message names the file, the fault and the remedy."""

    def __init__(self, path: str, what: str):
        super().__init__(f"checkpoint {path}: {what}; delete it or use another --checkpoint_dir")


ZIP_MAGIC = b"PK\x03\x04"  # how every file written by torch.save (zip format) begins
GLOBAL_RNG_KEYS = frozenset({"python", "numpy", "torch", "cuda"})  # and one per generator of the run


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def few(names) -> str:
    """At most three names, quoted (so that no stored string can break the one-line message)."""
    names = sorted(str(n) for n in names)
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (not a bool): what a stored count, accuracy or duration may be."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def show(value) -> str:
    """A stored value in a message: short scalars as they are, anything else by its type."""
    if isinstance(value, (int, float, str, type(None))) and len(repr(value)) <= 40:
        return repr(value)
    return describe(value)


def read_checkpoint(path: str, trainer: str, keys: frozenset) -> dict:
    """The checkpoint file's content, loaded without running any code it might contain: a dictionary
    of this program's format, written by ``trainer``, holding ``keys``."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as exc:
        raise CheckpointError(path, f"cannot be opened ({_one_line(exc)})") from None
    if not head:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    if head != ZIP_MAGIC:
        raise CheckpointError(path, "the file is not a checkpoint (not written by torch.save)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "the file is truncated (its end is missing)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(path, "the file holds objects other than tensors and plain containers, "
                                    "which are never loaded (torch.load with weights_only=True)") from None
    except Exception as exc:
        raise CheckpointError(path, f"the file is corrupt ({_one_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"the file holds {describe(state)}, not a checkpoint dictionary")
    if not (is_int(state.get("format")) and state["format"] == FORMAT_VERSION):
        raise CheckpointError(path, f"its format {show(state.get('format'))} is not this program's ({FORMAT_VERSION})")
    written_by = state.get("trainer", "continual")
    if written_by != trainer:
        raise CheckpointError(path, f"it was saved by {PROGRAMS.get(written_by, show(written_by))}, not by "
                                    f"{PROGRAMS[trainer]}")
    if not keys <= set(state):
        raise CheckpointError(path, f"it lacks {few(keys - set(state))}, which every checkpoint holds")
    return state


def _check_logger(path: str, logger) -> None:
    if not (isinstance(logger, dict) and is_int(logger.get("step")) and logger["step"] >= 0
            and (logger.get("run_id") is None or isinstance(logger["run_id"], str))):
        raise CheckpointError(path, "its logger state is not {'step': count, 'run_id': None or a wandb id}")


def find_checkpoint(args, trainer: str, keys: frozenset, stage: str, identity: dict) -> Optional[dict]:
    """The checkpoint in ``args.checkpoint_dir`` if there is one, checked against the run's ``identity``
    (``run_identity``); ``None`` when there is none.

    Without ``--resume`` an existing checkpoint is an error rather than being
    overwritten.  Temporary files left by a write that was killed are removed.
    A file that cannot be read, or whose arguments, count of completed stages
    (``stage``: "task", "epoch") or logger state are malformed, raises
    ``CheckpointError``; what depends on the built run is the caller's to check.
    """
    directory = args.checkpoint_dir
    for stale in glob.glob(os.path.join(glob.escape(directory), f".{CHECKPOINT_FILE}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):  # another process of the same job removed it first
            os.unlink(stale)
    path = checkpoint_path(directory)
    if not os.path.exists(path):
        return None
    state = read_checkpoint(path, trainer, keys)
    history = state["history"]
    if not (isinstance(history, dict) and is_int(history.get("stages_done")) and history["stages_done"] >= 0):
        raise CheckpointError(path, f"its history has no count of completed {stage}s (stages_done)")
    flags = state["args"]
    if not (isinstance(flags, dict) and all(isinstance(k, str) for k in flags)
            and all(isinstance(v, (bool, int, float, str, list, tuple, type(None))) for v in flags.values())):
        raise CheckpointError(path, f"its arguments are {describe(flags)}, not a dictionary of flag values")
    _check_logger(path, state["logger"])
    done = history["stages_done"]
    if not args.resume:
        raise UserError(f"--checkpoint_dir {directory} already holds a checkpoint ({done} {stage}(s) done): "
                        f"add --resume to continue it, or choose another directory")
    differ = differing_flags(state["args"], identity)
    if differ:
        raise UserError(f"--resume: {path} was saved by a run with other arguments: " + ", ".join(differ))
    return state


def check_state_dict(path: str, expected: dict, saved, what: str, cause: str) -> None:
    """``saved`` has the same tensor names, shapes and dtypes as ``expected`` (a module's state dict);
    ``cause`` says which flags would explain a difference ("another --backbone or --classifier")."""
    if not isinstance(saved, dict):
        raise CheckpointError(path, f"its {what} state is {describe(saved)}, not a dictionary of tensors")
    missing, unexpected = set(expected) - set(saved), set(saved) - set(expected)
    if missing or unexpected:
        raise CheckpointError(path, f"its {what} is not this run's, as if saved with {cause} (missing "
                                    f"{few(missing) or 'none'}, unexpected {few(unexpected) or 'none'})")
    for name, value in expected.items():
        stored = saved[name]
        if not (isinstance(stored, torch.Tensor) and stored.shape == value.shape and stored.dtype == value.dtype):
            raise CheckpointError(path, f"its {what}'s {name!r} is {describe(stored)}, this run's is "
                                        f"{describe(value)}, as if saved with {cause}")


def load_state(path: str, what: str, target, state) -> None:
    """``target.load_state_dict(state)`` (an optimizer, scheduler or scaler), a failure as one line."""
    try:
        target.load_state_dict(state)
    except Exception as exc:
        raise CheckpointError(path, f"its {what} state does not fit this run ({_one_line(exc)})") from None


def resume_or_start(run, log, find: Callable, restore: Callable, fresh: Callable[[], dict], stage: str) -> tuple:
    """(history, wandb logger state) of a run: from the checkpoint in ``--checkpoint_dir`` when it holds
    one (``find(args)`` reads and checks it, ``restore(run, state)`` puts it back), else ``fresh()`` and
    no logger state.  ``stage`` ("task", "epoch") names what the run counts in the message."""
    args = run.args
    saved = find(args) if args.checkpoint_dir else None
    if saved is None:
        if args.resume:
            log(f"No checkpoint in {args.checkpoint_dir} yet: starting from the first {stage}")
        return fresh(), None
    restore(run, saved)
    log(f"Resuming from {args.checkpoint_dir}: {saved['history']['stages_done']} {stage}(s) already done")
    return saved["history"], saved["logger"]


# ----------------------------------------------------------------------------- the continual trainer's checkpoint

STATE_KEYS = frozenset({"format", "args", "history", "model", "optimizer", "scheduler", "buffer", "rng", "logger"})
HISTORY_KEYS = frozenset({"stages_done", "rows_cil", "rows_til", "collapse", "n_steps", "train_time_s", "wall_time_s"})


def _generators(run) -> dict:
    return {"data_order": run.data_generator, "augmentation": run.augment_generator, **run.model.generators()}


def _device(run) -> torch.device:
    return torch.device(run.args.device)


def save_checkpoint(directory: str, run, history: dict, logger_state: dict) -> None:
    """Write the checkpoint of a run whose ``history['stages_done']`` stages are complete."""
    model = run.model
    write_checkpoint(directory, {
        "format": FORMAT_VERSION,
        "args": run_identity(run.args),
        "history": history,
        "model": model.state_dict(),
        "optimizer": model.opt.state_dict() if model.opt is not None else None,
        "scheduler": model.scheduler.state_dict() if model.scheduler is not None else None,
        "buffer": model.buffer.state_dict() if model.buffer is not None else None,
        "rng": capture_rng(_device(run), _generators(run)),
        "logger": logger_state,
        "data": data_fingerprint(run.train),
    })


def data_fingerprint(split) -> dict:
    """What identifies a run's training data cheaply: its shape and a hash of its labels and of at most 2^20
    of its input values, evenly spread.  Resuming on other data (another --data_path) is refused by it."""
    x = split.x.reshape(-1)
    digest = hashlib.sha256(x[::max(1, x.numel() >> 20)].cpu().numpy().tobytes())
    digest.update(split.y.cpu().numpy().tobytes())
    return {"shape": list(split.x.shape), "sha256": digest.hexdigest()[:16]}


def load_checkpoint(args) -> Optional[dict]:
    """The checkpoint in ``args.checkpoint_dir``, checked against ``args`` (``find_checkpoint``); ``None``
    when there is none.  What depends on the built run (history and number of tasks, model, buffer,
    optimizer, generators) is checked by ``restore_run``."""
    return find_checkpoint(args, "continual", STATE_KEYS, "task", run_identity(args))


def _check_history(path: str, run, history) -> None:
    """The per-task results: complete, no more stages than the run has, and one accuracy row per stage
    as long as the number of tasks seen at that stage."""
    if not isinstance(history, dict) or not HISTORY_KEYS <= set(history):
        missing = HISTORY_KEYS - set(history) if isinstance(history, dict) else ["history"]
        raise CheckpointError(path, f"its history of completed tasks lacks {few(missing)}")
    n_tasks = run.dataset.N_TASKS
    n_stages = 1 if run.model.JOINT else n_tasks
    done = history["stages_done"]
    if not is_int(done) or not 0 <= done <= n_stages:
        raise CheckpointError(path, f"it claims {show(done)} completed stage(s), but this run has {n_stages}")
    seen = ([n_tasks] if run.model.JOINT else list(range(1, n_tasks + 1)))[:done]
    for key in ("rows_cil", "rows_til"):
        rows = history[key]
        if not (isinstance(rows, list) and all(isinstance(r, list) and all(is_number(a) for a in r) for r in rows)
                and [len(r) for r in rows] == seen):
            raise CheckpointError(path, f"history: {key} is not {done} row(s) of {seen} accuracies")
    collapse, expected = history["collapse"], done if run.args.collapse_metrics else 0
    if not (isinstance(collapse, list) and len(collapse) == expected and all(isinstance(c, dict) for c in collapse)):
        raise CheckpointError(path, f"history: collapse is not a list of {expected} per-task metrics")
    if not is_int(history["n_steps"]) or history["n_steps"] < 0:
        raise CheckpointError(path, f"history: n_steps is {show(history['n_steps'])}, not a count of steps")
    for key in ("train_time_s", "wall_time_s"):
        if not is_number(history[key]) or history[key] < 0:
            raise CheckpointError(path, f"history: {key} is {show(history[key])}, not a duration in seconds")


def _check_buffer(path: str, run, saved) -> None:
    """A replay buffer of this run's --buffer_size, whose fields fit the data."""
    buffer = run.model.buffer
    if buffer is None:
        if saved is not None:
            raise CheckpointError(path, f"it holds a replay buffer, but --model {run.args.model} keeps none")
        return
    if not (isinstance(saved, dict) and {"size", "num_seen", "fields"} <= set(saved)
            and is_int(saved["num_seen"]) and saved["num_seen"] >= 0 and isinstance(saved["fields"], dict)
            and all(isinstance(v, torch.Tensor) for v in saved["fields"].values())):
        raise CheckpointError(path, "its replay buffer is missing or malformed")
    if not (is_int(saved["size"]) and saved["size"] == buffer.size):
        raise CheckpointError(path, f"its replay buffer has size {show(saved['size'])}, but --buffer_size is "
                                    f"{buffer.size}, as if saved with another --buffer_size")
    if saved["num_seen"] > 0 and not saved["fields"]:
        raise CheckpointError(path, f"its replay buffer has seen {saved['num_seen']} samples but stores none")
    train = run.train
    fits = {"examples": (tuple(train.x.shape[1:]), train.x.dtype), "labels": ((), train.y.dtype),
            "logits": ((run.dataset.num_classes,), None)}
    for name, value in saved["fields"].items():
        shape, dtype = fits.get(name, (tuple(value.shape[1:]), None))
        if (tuple(value.shape) != (buffer.size + 1,) + shape) or (dtype is not None and value.dtype != dtype):
            raise CheckpointError(path, f"its replay buffer's {show(name)} is {describe(value)}, which does not "
                                        f"fit a buffer of {buffer.size} samples of this dataset")


def _prepare_optimizer(path: str, run, state: dict):
    """A new optimizer and scheduler holding the saved states (``None, None`` when none was saved)."""
    if state["optimizer"] is None:
        return None, None
    opt = run.model.build_optimizer()
    if opt is None:  # a method that takes no optimizer steps (GDumb): an older checkpoint's state is moot
        return None, None
    load_state(path, "optimizer", opt, state["optimizer"])
    scheduler = run.model.build_scheduler(opt)
    if state["scheduler"] is not None:
        if scheduler is None or not isinstance(state["scheduler"], dict):
            raise CheckpointError(path, "it holds a learning-rate scheduler state this run cannot use")
        load_state(path, "scheduler", scheduler, state["scheduler"])
    return opt, scheduler


def restore_run(run, state: dict) -> None:
    """Put the run back in the state saved after its last completed task.

    Everything is checked against the built run first (number of tasks, model,
    buffer, optimizer, generators): a checkpoint that does not fit raises
    ``CheckpointError`` and leaves the run untouched.
    """
    path = checkpoint_path(run.args.checkpoint_dir)
    saved_data, data = state.get("data"), data_fingerprint(run.train)  # older checkpoints have none
    if saved_data is not None and saved_data != data:
        raise CheckpointError(path, f"it was saved on other training data ({show(saved_data)}; this run's "
                                    f"--data_path {run.args.data_path}: {show(data)})")
    _check_history(path, run, state["history"])
    check_state_dict(path, run.model.state_dict(), state["model"], "model",
                     "another --model, --backbone or --classifier")
    _check_buffer(path, run, state["buffer"])
    check_rng(path, _device(run), _generators(run), state["rng"])
    opt, scheduler = _prepare_optimizer(path, run, state)
    model = run.model
    model.load_state_dict(state["model"])
    if model.buffer is not None:
        model.buffer.load_state_dict(state["buffer"])
    if opt is not None:
        model.opt, model.scheduler = opt, scheduler
    restore_rng(_device(run), _generators(run), state["rng"])
