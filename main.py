"""Run one continual-learning experiment: ``python main.py --help`` lists every flag and choice."""
from __future__ import annotations

import signal
import sys

from utils.args import parse_args
from utils.errors import UserError


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    from utils.training import run_experiment
    from utils.io import write_json_atomic
    # SIGTERM (wandb agents, schedulers, the grid runner) stops the run like Ctrl-C: cleanly, checkpoint kept.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_experiment(args)
    except UserError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("main.py: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.results_file:
        write_json_atomic(args.results_file, results)
    print(f"Final ({args.model_name}, {args.classifier}, masked={args.masked_softmax}, {args.dataset}): "
          f"Class-IL {results['class_il']:.2f} | Task-IL {results['task_il']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
