"""What the runner runs: a run of the grid, and a pack of runs that differ only in their seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union


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
