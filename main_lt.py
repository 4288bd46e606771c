"""Long-tailed classification: ``python main_lt.py --dataset cifar10-lt --method arc-mixup ...``.

The four arms of the paper's long-tail comparison (``--method``): ``ce`` and
``mixup`` with a learnable FC head, ``etf-dr`` (mixup + fixed simplex ETF +
dot regression) and ``arc-mixup`` (fixed FNO head); ``etf-dr-plain`` is
``etf-dr`` without mixup.  Defaults are the authors' CIFAR-LT protocol;
``--load_best_args`` sets their ImageNet-LT / Places-LT configs.  Multi-GPU:
``torchrun --nproc_per_node N main_lt.py ...`` (``--batch_size`` stays the
global batch).  ``python main_lt.py --help`` lists every flag; the code is the
``longtail`` package.
"""
from __future__ import annotations

import sys

from longtail.args import parse_args
from longtail.processes import Processes
from longtail.trainer import headline, run_long_tail
from utils.entry import run_entry


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_entry("main_lt.py", args, run_long_tail, headline, writes=Processes.from_environment().main)


if __name__ == "__main__":
    sys.exit(main())
