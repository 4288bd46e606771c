"""Run one continual-learning experiment: ``python main.py --help`` lists every flag and choice."""
from __future__ import annotations

import os
import signal
import sys

from datasets.utils import absent_folders, remove_empty_folders
from utils.args import parse_args
from utils.errors import UserError


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def check_outputs(args) -> None:
    """Every output location is writable before the first step, not after the last one."""
    from utils.io import check_writable_dir, check_writable_file
    if args.results_file:
        check_writable_file(args.results_file, "--results_file")
    if args.checkpoint_dir:
        check_writable_dir(args.checkpoint_dir, "--checkpoint_dir")


def save_results(args, results: dict) -> None:
    from utils.io import write_json_atomic
    try:
        write_json_atomic(args.results_file, results)
    except OSError as exc:
        keep = (f"the checkpoint in {args.checkpoint_dir} keeps the finished run: rerun the same command with "
                f"--resume and another --results_file to write them" if args.checkpoint_dir else
                "the final accuracies are printed above; add --checkpoint_dir to keep a run whose results "
                "cannot be written")
        raise UserError(f"could not write the results to {args.results_file}: {exc.strerror or exc}; {keep}") from None


def final_line(args, results: dict) -> str:
    """The headline numbers (test split); Task-IL is undefined on a domain-incremental benchmark."""
    task_il = "n/a (domain-IL)" if results["task_il"] is None else f"{results['task_il']:.2f}"
    line = (f"Final ({args.model_name}, {args.classifier}, masked={args.masked_softmax}, {args.dataset}): "
            f"Class-IL {results['class_il']:.2f} | Task-IL {task_il}")
    if results["validation"]:
        line += f" | validation Class-IL {results['validation']['class_il']:.2f}"
    return line + (" | partial run" if results["partial"] else "")


def main(argv=None) -> int:
    args = parse_args(argv)
    from utils.runlock import run_lock
    from utils.training import run_experiment
    # SIGTERM (wandb agents, schedulers, the grid runner) stops the run like Ctrl-C: cleanly, checkpoint kept.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # the results folder a failed run created (results/<dataset>/ by default) is removed again if left empty
    created = absent_folders(os.path.dirname(os.path.abspath(args.results_file))) if args.results_file else []
    try:
        check_outputs(args)
        with run_lock(args.results_file, args.checkpoint_dir):  # one process per run, or a one-line refusal
            results = run_experiment(args)
            print(final_line(args, results))
            if args.results_file:
                save_results(args, results)
                print(f"Results written to {os.path.abspath(args.results_file)}")
    except UserError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("main.py: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_empty_folders(created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
