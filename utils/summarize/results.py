"""The one reader of results files (``main.py`` and ``main_lt.py --results_file``), used by
the summary tables, the collapse comparison and the grid runner's progress lines.

``load(path)`` returns the file's JSON mapping or raises ``ResultsError`` with a
one-line reason.  ``record(path, results)`` flattens a continual-learning or a
long-tail results file into one record (a dict) with the fields the summaries
use; ``read_directory(directory)`` reads every ``*.json`` under a directory.

A record's fields:

- every record: ``path``, ``setting`` (``"cl"`` or ``"long-tail"``), ``seed``,
  ``dataset``, ``method``, ``identity`` (the arguments that define what was
  computed: every flag but the operational ones, the seed, the alias and
  ``load_best_args``), ``partial`` (the run was cut short, e.g. ``--debug_mode``);
- continual learning: ``model``, ``classifier``, ``head`` (the classifier with
  any non-default head-owned flag, e.g. ``fno fno_scale=0``), ``buffer``,
  ``matrix`` (the Class-IL accuracy matrix), one value per ``CL_METRICS`` label
  (NaN where the file has ``null``, e.g. forgetting of a one-row matrix), and
  ``val_class_il`` / ``val_task_il`` (NaN without a validation split);
- long-tail: ``imbalance_ratio`` and one value per ``lt_key(epoch, label)`` of
  ``LT_EPOCHS`` x ``LT_METRICS`` (NaN for an empty group or an older file).
"""
from __future__ import annotations

import json
import math
import os
import stat
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from backbone.heads import get_head_class, head_names
from utils.flags import OPERATIONAL_FLAGS, canonical
from utils.wandb_logger import RESULTS_KEY

# label -> results-file field: each must be in the file; Class-IL must be a number, the others may be null
# (a one-row matrix has no forgetting; a setting without task identities no Task-IL)
CL_METRICS = {"Class-IL": "class_il", "Task-IL": "task_il",
              "Forgetting Class-IL": "forgetting_class_il", "Forgetting Task-IL": "forgetting_task_il",
              "BWT Class-IL": "bwt_class_il", "BWT Task-IL": "bwt_task_il"}
LT_METRICS = {"Acc": "accuracy", "Many": "many_acc", "Medium": "medium_acc", "Few": "few_acc"}
# epoch label -> the results-file block holding it (the final epoch is also at the top level: the headline)
LT_EPOCHS = {"final epoch": "final_epoch", "best epoch (selected on test)": "best_epoch"}
# Arguments that do not define what a run computes, beyond the operational flags: the seed varies within a
# cell by design, the alias resolves to the model and flags, and --load_best_args to the values it sets.
NOT_COMPARED = OPERATIONAL_FLAGS | {"seed", "model_name", "load_best_args"}
MAX_RESULTS_BYTES = 64 << 20  # results files are kilobytes; a larger *.json is something else


def lt_key(epoch: str, label: str) -> str:
    """The record field of a long-tail accuracy, e.g. "final epoch: Many"."""
    return f"{epoch}: {label}"


class ResultsError(ValueError):
    """A file that cannot be used: the message is the one-line reason (the caller names the file)."""


def load_json(path: str) -> dict:
    """A file's JSON mapping (any mapping).  A FIFO, device or socket named ``*.json`` (which would block or
    never end) and a file larger than ``MAX_RESULTS_BYTES`` are refused without reading them."""
    try:
        results = json.loads(read_regular(path, MAX_RESULTS_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ResultsError(f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ResultsError("not UTF-8 text") from None
    except RecursionError:
        raise ResultsError("not a results file (nested too deep)") from None
    except ValueError as exc:
        raise ResultsError(f"not valid JSON ({exc})") from None
    if not isinstance(results, dict):
        raise ResultsError("not a results file (not a JSON mapping)")
    return results


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (a link to one is followed), or ``ResultsError``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultsError("not a regular file")
        if info.st_size > limit:
            raise ResultsError(f"larger than {limit} bytes ({info.st_size}); not a results file")
        return f.read(limit + 1)


def load(path: str) -> dict:
    """A results file's JSON mapping, which must hold an ``args`` mapping."""
    results = load_json(path)
    if not isinstance(results.get("args"), dict):
        raise ResultsError("not a results file (no 'args' mapping)")
    return results


def is_partial(results: dict) -> bool:
    """Whether the run was cut short (debug / smoke runs write ``"partial": true``)."""
    return results.get("partial") is True


def number(mapping: dict, key: str, where: str = "", nullable: bool = False) -> float:
    """A finite number; with ``nullable`` an explicit ``null`` is NaN (the key must still be there)."""
    value = mapping.get(key)
    if nullable and key in mapping and value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ResultsError(f"field {where}{key!r} is missing or not a finite number ({value!r})")
    return float(value)


def _field(args: dict, key: str):
    if args.get(key) is None:
        raise ResultsError(f"field 'args.{key}' is missing")
    if isinstance(args[key], (bool, list, dict)):  # a table groups by it: a word or a number
        raise ResultsError(f"field 'args.{key}' is not a word or number ({str(args[key])[:40]})")
    return args[key]


def _matrix(results: dict, key: str, complete: bool = True, nullable: bool = False) -> Optional[List[list]]:
    """An accuracy matrix; ``complete``: its last row holds every task's accuracy (a finished run);
    ``nullable``: ``null`` is allowed (Task-IL on a domain-IL benchmark)."""
    m = results.get(key)
    if nullable and key in results and m is None:
        return None
    if not isinstance(m, list) or not m or not all(isinstance(r, list) and r for r in m):
        raise ResultsError(f"field {key!r} is missing or not a list of rows")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for r in m for v in r):
        raise ResultsError(f"field {key!r} holds something other than numbers and nulls")
    if complete and any(v is None for v in m[-1]):
        raise ResultsError(f"field {key!r} is incomplete (the last row must hold every task's accuracy)")
    return m


def head_flags() -> Dict[str, dict]:
    """Every registered head's own flags: head name -> {flag: default}."""
    return {name: {flag: spec.default for flag, spec in get_head_class(name).FLAGS.items()}
            for name in head_names()}


def head_label(args: dict, flags_of_heads: Dict[str, dict]) -> str:
    """The classifier, with each head-owned flag that differs from its default: ``fno`` or ``fno fno_scale=0``."""
    classifier = str(args["classifier"])
    changed = [f"{flag}={canonical(args[flag])}" for flag, default in flags_of_heads.get(classifier, {}).items()
               if args.get(flag) is not None and canonical(args[flag]) != canonical(default)]
    return " ".join([classifier] + changed)


def run_label(results: dict) -> str:
    """A short description of a run: model (the alias when one was used) / classifier, "+mask" when masked."""
    args = results.get("args") or {}
    head = str(args.get("classifier", "?")) + ("+mask" if args.get("masked_softmax") else "")
    return f"{args.get('model_name', args.get('model', args.get('method', '?')))}/{head}"


def record(path: str, results: dict, flags_of_heads: Dict[str, dict]) -> dict:
    """One flat record of a loaded results file (see the module docstring), or ``ResultsError``."""
    args = results["args"]
    rec = {"path": path, "seed": _field(args, "seed"), "dataset": _field(args, "dataset"),
           "identity": {k: v for k, v in args.items() if k not in NOT_COMPARED}, "partial": is_partial(results)}
    if results.get("setting") == "long-tail":
        rec.update(setting="long-tail", method=_field(args, "method"), imbalance_ratio=_field(args, "imbalance_ratio"))
        for epoch, block_key in LT_EPOCHS.items():
            block = results.get(block_key)
            if block_key == "final_epoch" and not isinstance(block, dict):
                block = results  # files written before the final_epoch block: the top-level headline
            for label, key in LT_METRICS.items():
                if not isinstance(block, dict):
                    rec[lt_key(epoch, label)] = math.nan
                else:  # the overall accuracy is required; a group is null when no class falls in it
                    rec[lt_key(epoch, label)] = number(block, key, f"{block_key}." if block is not results else "",
                                                       nullable=label != "Acc")
        return rec
    rec.update(setting="cl", model=str(_field(args, "model")),
               method=str(_field(args, "model")) + ("+M" if args.get("masked_softmax") else ""),
               classifier=str(_field(args, "classifier")), buffer=_field(args, "buffer_size"),
               matrix=_matrix(results, "acc_matrix_class_il", complete=not rec["partial"]))
    rec["head"] = head_label(args, flags_of_heads)
    _matrix(results, "acc_matrix_task_il", complete=not rec["partial"], nullable=True)
    for label, key in CL_METRICS.items():
        rec[label] = number(results, key, nullable=label != "Class-IL")
    validation = results.get("validation")  # null or absent: no validation split was held out
    if validation is None:
        rec["val_class_il"] = rec["val_task_il"] = math.nan
    elif not isinstance(validation, dict):
        raise ResultsError(f"field 'validation' is not a mapping ({validation!r})")
    else:
        rec["val_class_il"] = number(validation, "class_il", "validation.")
        rec["val_task_il"] = number(validation, "task_il", "validation.", nullable=True)
    return rec


def read_directory(directory: str, report=print) -> List[dict]:
    """The records of every usable ``*.json`` under ``directory`` (recursively, in name order).

    A file that cannot be used is reported as ``skipped PATH: reason``; a second
    copy of a run (same setting, identity, seed and partial mark) as
    ``skipped PATH: the same run ... as FIRST``.  Neither is returned.
    """
    def files():
        for root, dirs, names in os.walk(directory):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(".json"):
                    path = os.path.join(root, name)
                    yield path, lambda path=path: load(path)
    return read_sources(files(), report)


def read_sources(sources: Iterable[Tuple[str, Callable[[], dict]]], report=print) -> List[dict]:
    """The records of ``(where, load)`` pairs (``load()`` gives the results mapping or raises
    ``ResultsError``), each unusable or repeated one reported by its ``where`` and left out."""
    flags_of_heads = head_flags()
    records: List[dict] = []
    seen: Dict[Tuple, str] = {}
    for where, load_results in sources:
        try:
            rec = record(where, load_results(), flags_of_heads)
        except ResultsError as exc:
            report(f"skipped {where}: {exc}")
            continue
        key = (rec["setting"], json.dumps(rec["identity"], sort_keys=True, default=str), rec["seed"],
               rec["partial"])
        if key in seen:
            report(f"skipped {where}: the same run (same arguments and seed) as {seen[key]}")
            continue
        seen[key] = where
        records.append(rec)
    return records


def wandb_results(run) -> dict:
    """The results file a finished wandb run keeps in its summary (``WandbLogger.finish``), or ``ResultsError``."""
    try:
        text = run.summary.get(RESULTS_KEY)
    except Exception as exc:
        raise ResultsError(f"cannot read its summary ({type(exc).__name__}: {exc})") from None
    if text is None:
        raise ResultsError(f"its summary has no {RESULTS_KEY!r} (logged by an older version, or not finished)")
    try:
        results = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"its {RESULTS_KEY!r} is not valid JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("args"), dict):
        raise ResultsError("not a results file (no 'args' mapping)")
    return results


def read_wandb(api, project: str, sweep: Optional[str] = None, report=print) -> List[dict]:
    """The records of the finished runs of a wandb project ``ENTITY/PROJECT`` (of one sweep when given),
    read through ``api`` (``wandb.Api()``, or any object with its ``runs`` and ``sweep`` methods), in run
    name order; runs not finished are reported and left out."""
    runs = list(api.sweep(f"{project}/{sweep}").runs if sweep else api.runs(project))
    runs.sort(key=lambda run: (str(getattr(run, "name", "") or ""), str(run.id)))
    sources = []
    for run in runs:
        where = f"wandb:{project}/{run.id}"
        if run.state != "finished":
            report(f"skipped {where}: state {run.state}")
            continue
        sources.append((where, lambda run=run: wandb_results(run)))
    return read_sources(sources, report)


def headline(path: str) -> str:
    """A finished run's headline numbers, for progress lines ("" when the file cannot be read)."""
    try:
        results = load_json(path)
    except ResultsError:
        return ""
    shown = [(label, results.get(key)) for label, key in
             (("Class-IL", "class_il"), ("Task-IL", "task_il"), ("acc", "accuracy"))]
    return "  ".join(f"{label} {value:.2f}" for label, value in shown
                     if isinstance(value, (int, float)) and not isinstance(value, bool))
