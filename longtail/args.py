"""``main_lt.py``'s command line: the protocol's flags, the authors' presets, and the flags every entry point takes.

Every flag defaults to ``None`` in the parser so that flags given explicitly
can be told apart.  Values are then resolved in this order: the command line,
``--load_best_args`` (the authors' config for the dataset and arm), the
dataset's protocol (backbone, width, schedule, shot groups), and the defaults
below.  Seed, device, data and output places, checkpoints and wandb are the
core's shared flags (``utils.run_flags``).
"""
from __future__ import annotations

import argparse
import os
import sys

from backbone import backbone_names
from longtail.arms import lt_method_names
from longtail.data import LT_DATASETS, SHOT_GROUP_DEFINITIONS, get_lt_dataset_class, lt_dataset_names
from longtail.processes import Processes
from utils.cli import (Extend, OneLineParser, binary, comma_list, fill_metavars, momentum, non_negative, non_negative_int,
                       positive, switch)
from utils.run_flags import RUN_DEFAULTS, add_run_flags, given_flags, parse_command_line, resolve_run_flags

DEFAULTS = dict(RUN_DEFAULTS, **{
    "n_epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
    "warmup_epochs": 5, "lr_milestones": [160, 180], "lr_decay": 0.1, "mixup_alpha": 1.0,
    "image_size": 224, "workers": min(8, os.cpu_count() or 1), "amp": "none", "channels_last": 0,
    "eval_every": 1, "checkpoint_every": 1, "color_jitter": 0.0, "pretrained": None, "load_best_args": False,
    "debug_mode": 0,
})
DEBUG_STEPS = 5  # --debug_mode 1: optimizer steps per epoch


def preset(dataset_cls: type, method: str) -> dict:
    """What ``--load_best_args`` sets for this dataset and arm (the authors' config)."""
    return dict(dataset_cls.PRESET, **dataset_cls.PRESET_ARMS.get(method, {}))


def describe_presets() -> str:
    parts = []
    for name, cls in sorted(LT_DATASETS.items()):
        values = ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in cls.PRESET.items())
        arms = "".join(f"; {arm}: " + ", ".join(f"{k} {v}" for k, v in extra.items())
                       for arm, extra in cls.PRESET_ARMS.items())
        parts.append(f"{name}: {values}{arms}")
    return "; ".join(parts).replace("%", "%%")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="main_lt.py", argument_default=None,
                      description="Long-tailed classification with FC, simplex-ETF or FNO heads.")
    g = p.add_argument_group("experiment")
    g.add_argument("--dataset", choices=lt_dataset_names(), help="benchmark (required)")
    g.add_argument("--method", choices=lt_method_names(), help="arm (required): ce, mixup (FC head), "
                   "etf-dr (mixup + fixed simplex ETF + dot regression, the paper's row), etf-dr-plain (the same "
                   "without mixup), arc-mixup (fixed FNO head)")
    g.add_argument("--load_best_args", type=switch, nargs="?", const=True,
                   help="the authors' config for the dataset; explicit flags win. It sets " + describe_presets())
    g.add_argument("--imbalance_ratio", type=positive(float),
                   help="CIFAR-LT only: largest / smallest class size, e.g. 100, 50, 10 (default 100)")
    g.add_argument("--backbone", choices=backbone_names(), help="default: the dataset's (resnet32 for CIFAR-LT, "
                   "resnet50 for ImageNet-LT, resnet152 for Places-LT)")
    g.add_argument("--width", type=positive(int), help="resnet32 base channels (default 16 on CIFAR-10-LT: D=64; "
                   "32 on CIFAR-100-LT: D=128)")
    g.add_argument("--pretrained", help="initialise the backbone from this local state-dict file (a torchvision "
                   "file for resnet50/resnet152, its fc entries dropped; Places-LT (FT): an ImageNet-pretrained "
                   "resnet152). Nothing is downloaded")
    h = p.add_argument_group("hyper-parameters")
    h.add_argument("--n_epochs", type=positive(int), help="epochs (default 200)")
    h.add_argument("--batch_size", type=positive(int), help="global batch size (default 128)")
    h.add_argument("--lr", type=positive(float), help="peak learning rate (default 0.1)")
    h.add_argument("--momentum", type=momentum, help="SGD momentum (default 0.9)")
    h.add_argument("--weight_decay", type=non_negative(float), help="weight decay (default 2e-4)")
    h.add_argument("--warmup_epochs", type=non_negative_int,
                   help="linear warm-up epochs, from 1/3 of the lr (default 5)")
    h.add_argument("--schedule", choices=("step", "cosine"),
                   help="after the warm-up: step (x lr_decay at each milestone) or cosine; default: the dataset's")
    h.add_argument("--lr_milestones", type=comma_list(non_negative_int), nargs="+", action=Extend, metavar="EPOCH",
                   help="step epochs, with spaces or commas (default 160 180)")
    h.add_argument("--lr_decay", type=positive(float), help="step factor (default 0.1)")
    h.add_argument("--mixup_alpha", type=positive(float),
                   help="Beta(alpha, alpha) of mixup / etf-dr / arc-mixup (default 1)")
    h.add_argument("--color_jitter", type=non_negative(float), help="imagenet-lt / places-lt: ColorJitter(s, s, s, "
                   "0) in training (default 0: none)")
    r = add_run_flags(p, "epoch")
    r.add_argument("--checkpoint_every", type=positive(int),
                   help="with --checkpoint_dir: save every N epochs and after the last (default 1)")
    r.add_argument("--eval_every", type=non_negative_int,
                   help="evaluate on the test set every N epochs and after the last (default 1, as the authors; "
                   "0: the last only); the best of these is reported as selected on the test set, the final "
                   "epoch is the headline")
    r.add_argument("--debug_mode", type=binary, metavar="{0,1}",
                   help=f"1: a smoke test, {DEBUG_STEPS} steps per epoch, one epoch without warm-up unless "
                        f"--n_epochs / --warmup_epochs say otherwise; the results say \"partial\": true")
    r.add_argument("--shot_groups", choices=SHOT_GROUP_DEFINITIONS,
                   help="many/medium/few: paper (the authors' class-rank ranges after sorting by training count; "
                   "the default) or counts (>100, 20-100, <20 training images)")
    r.add_argument("--image_size", type=positive(int), help="ImageNet-LT / Places-LT crop size (default 224)")
    r.add_argument("--workers", type=non_negative_int, help="DataLoader workers for ImageNet-LT / Places-LT "
                   "(default min(8, CPUs); a resumed run repeats an uninterrupted one exactly with 0)")
    s = p.add_argument_group("speed")
    s.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast precision (default none; fp16: "
                   "with a GradScaler, CUDA only)")
    s.add_argument("--channels_last", type=binary, help="channels-last memory format (0|1, default 0)")
    fill_metavars(p)
    return p


def resolve(ns: argparse.Namespace) -> argparse.Namespace:
    explicit = given_flags(ns, {"dataset": lt_dataset_names(), "method": lt_method_names()})
    dataset_cls = get_lt_dataset_class(explicit["dataset"])
    values = dict(DEFAULTS, backbone=dataset_cls.BACKBONE, schedule=dataset_cls.SCHEDULE, width=None,
                  imbalance_ratio=getattr(dataset_cls, "DEFAULT_IMBALANCE_RATIO", None),
                  shot_groups="paper" if dataset_cls.SHOT_RANKS else "counts")
    if explicit.get("load_best_args"):
        values.update(preset(dataset_cls, explicit["method"]))
    if explicit.get("debug_mode"):
        values.update(n_epochs=1, warmup_epochs=0)  # below the command line: given values still win
    values.update(explicit)
    if "width" not in explicit and values["backbone"] == dataset_cls.BACKBONE:
        values["width"] = dataset_cls.BACKBONE_WIDTH
    world = Processes.from_environment().world
    if values["batch_size"] % world:
        raise ValueError(f"--batch_size {values['batch_size']} is the global batch and must be divisible by "
                         f"the {world} torchrun processes")
    resolve_run_flags(values, explicit)
    return argparse.Namespace(**values)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and resolve a command line; invalid values exit with a one-line error and code 2."""
    return parse_command_line(build_parser(), sys.argv[1:] if argv is None else list(argv), resolve)
