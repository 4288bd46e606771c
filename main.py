"""Run one continual-learning experiment: ``python main.py --help`` lists every flag and choice."""
from __future__ import annotations

import sys

from utils.args import parse_args
from utils.entry import run_entry
from utils.stacked.trainer import run_seeds
from utils.training import run_experiment


def final_line(args, results: dict) -> str:
    """The headline numbers (test split); Task-IL is undefined on a domain-incremental benchmark and in a
    task-free run."""
    why = "task-free" if getattr(args, "task_free", 0) else "domain-IL"
    task_il = f"n/a ({why})" if results["task_il"] is None else f"{results['task_il']:.2f}"
    line = (f"Final ({args.model_name}, {args.classifier}, masked={args.masked_softmax}, {args.dataset}): "
            f"Class-IL {results['class_il']:.2f} | Task-IL {task_il}")
    if results["validation"]:
        line += f" | validation Class-IL {results['validation']['class_il']:.2f}"
    return line + (" | partial run" if results["partial"] else "")


def main(argv=None) -> int:
    """Parse, then run as every entry point does (``utils.entry``): outputs checked first, one process per run,
    SIGTERM as Ctrl-C with the checkpoint kept, one-line errors (exit 2), results written atomically.
    ``--seeds`` trains its seeds as one stacked model (``utils.stacked``), each seed with its single run's outputs."""
    args = parse_args(argv)
    return run_entry("main.py", args, run_seeds if args.seeds else run_experiment, final_line)


if __name__ == "__main__":
    sys.exit(main())
