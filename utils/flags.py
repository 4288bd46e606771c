"""One source for which flags describe a run and how a run's results file is named.

Operational flags say where files go, how a run is logged and where it runs,
never what it computes: they are left out of results names (``results_name``),
out of the settings ``utils.summarize`` compares across runs, and may change
when a checkpointed run is resumed (except the device: a run resumed on
another device is not the same computation, so the checkpoint refuses it).
The CPU thread count (``num_threads``) is one of them: a stacked ``--seeds``
process uses torch's threads where its seeds' single runs use the dataset's one
thread, with the same numbers (docs/stacked.md), and either may resume, report
and be summarised with the other's runs.
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict, Optional

OPERATIONAL_FLAGS = frozenset({
    "results_file", "results_dir", "checkpoint_dir", "checkpoint_every", "resume", "overwrite", "data_path",
    "rebuild_cache",
    "device", "num_threads", "deterministic",
    "nowand", "wandb_project", "wandb_entity", "wandb_name",
})
MAY_CHANGE_ON_RESUME = OPERATIONAL_FLAGS - {"device"}
NAME_FIELD = "{name}"  # in --checkpoint_dir: the run's results name, so every run of a sweep gets its own folder
DATA_PATH_ENV = "FNO_CL_DATA"  # where the grid runner takes --data_path from when its command gives none
MAX_NAME = 180


def canonical(value) -> str:
    """One spelling per value, whether it comes from YAML (typed) or from argparse (typed from text)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return canonical(kind(value))
            except ValueError:
                pass
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def results_name(params: Dict[str, object]) -> str:
    """The file name (without ``.json``) of the run with these parameters: ``key=value`` pairs sorted by key.

    Operational flags are left out.  Characters unsafe in file names are
    replaced, and a short hash of the exact pairs is appended when anything was
    replaced or shortened, so names stay unique.
    """
    pairs = ",".join(f"{k}={canonical(v)}" for k, v in sorted(params.items())
                     if k not in OPERATIONAL_FLAGS and v is not None)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", pairs)
    if name != pairs or len(name) > MAX_NAME:
        name = name[:MAX_NAME] + "," + hashlib.sha1(pairs.encode()).hexdigest()[:10]
    return name or "defaults"


def fill_name(path: Optional[str], name: str) -> Optional[str]:
    """``path`` (a ``--checkpoint_dir``) with ``{name}`` replaced by ``name``, the run's results name: a sweep
    file gives every run ``DIR/checkpoints/{name}``, so each run of the sweep resumes its own folder."""
    return None if path is None else path.replace(NAME_FIELD, name)
