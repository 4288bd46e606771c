"""The command line of the stream settings (docs/online.md): online, budgets, blurry, task-free, label noise,
and the boundary-free choices of ``--masked_softmax``.

``add_stream_flags`` adds the flags to ``main.py``'s parser, ``ONLINE_PROTOCOL``
is what ``--online 1`` sets (above the dataset's protocol, below
``--load_best_args`` and the command line), and ``check_stream`` refuses, in
one line each, the combinations that have no meaning.
"""
from __future__ import annotations

import argparse

from utils.cli import binary, bounded, positive

STREAM_DEFAULTS = {"online": 0, "fitting_mode": "epochs", "n_iters": None, "blurry": 0, "task_free": 0,
                   "noise_rate": 0, "noise_type": None}
# The online literature's protocol (ER-ACE, Caccia et al. 2022; Mammoth's online dataset configs): one pass,
# stream batch 10 and replay batch 10.
ONLINE_PROTOCOL = {"n_epochs": 1, "batch_size": 10, "minibatch_size": 10}
MASK_CHOICES = ("0", "1", "batch", "seen")
BOUNDARY_FREE_MASKS = ("batch", "seen")


def masked_softmax_choice(text: str):
    """0, 1 (ints, as before) or one of the boundary-free masks (a name)."""
    if text not in MASK_CHOICES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(MASK_CHOICES)}, got {text!r}")
    return int(text) if text in ("0", "1") else text


def add_stream_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("stream settings (docs/online.md)")
    g.add_argument("--online", type=binary, metavar="{0,1}",
                   help="1: the online protocol, one pass over each task's stream (every sample used once), "
                        "stream and replay batch 10 unless given; online rows of --load_best_args")
    g.add_argument("--fitting_mode", choices=("epochs", "iters"),
                   help="epochs (default): --n_epochs passes per task; iters: --n_iters optimizer steps per task "
                        "(passes repeated as needed), for comparisons at equal compute")
    g.add_argument("--n_iters", type=positive(int), metavar="N",
                   help="optimizer steps per task with --fitting_mode iters")
    g.add_argument("--blurry", type=bounded(float, 0, 99), metavar="M",
                   help="blurry-M (Rainbow Memory): M percent (0-99) of each task's training samples are moved to "
                        "the other tasks in equal parts, so each task's stream holds M%% other tasks' classes")
    g.add_argument("--task_free", type=binary, metavar="{0,1}",
                   help="1: no task boundaries reach the method (no begin_task/end_task, one optimizer for the "
                        "whole stream, no task number); Task-IL is undefined")
    g.add_argument("--noise_rate", type=bounded(float, 0, 1), metavar="R",
                   help="corrupt this share (0-1) of each noisy class's training labels once, from the run's seed "
                        "(test labels stay clean)")
    g.add_argument("--noise_type", choices=("sym", "asym"),
                   help="sym (default): a uniformly drawn other class; asym: the dataset's class pairs "
                        "(seq-cifar10: Patrini et al.'s truck->automobile, bird->airplane, deer->horse, cat<->dog)")


def check_stream(values: dict, explicit: dict, dataset_cls, model_cls, model_name: str) -> None:
    """Fill the stream defaults that depend on others and refuse what has no meaning (``ValueError``)."""
    dataset = values["dataset"]
    if values["noise_rate"] and values["noise_type"] is None:
        values["noise_type"] = "sym"
    mask = values["masked_softmax"]
    refusals = [
        (values["online"] and values["n_epochs"] != 1,
         f"--online 1 passes over each task's stream once; drop --n_epochs {values['n_epochs']}"),
        (values["online"] and values["fitting_mode"] == "iters",
         "--online 1 passes over each task's stream once; --fitting_mode iters repeats it, give one or the other"),
        (values["fitting_mode"] == "iters" and values["n_iters"] is None,
         "--fitting_mode iters needs --n_iters N (optimizer steps per task)"),
        (values["fitting_mode"] != "iters" and values["n_iters"] is not None,
         f"--n_iters {values['n_iters']} needs --fitting_mode iters"),
        (values["noise_rate"] == 1, "--noise_rate 1 would leave no correct label; give a rate below 1"),
        ("noise_type" in explicit and not values["noise_rate"], "--noise_type needs --noise_rate > 0"),
        (values["noise_type"] == "asym" and dataset_cls.ASYMMETRIC_NOISE is None,
         f"--noise_type asym: {dataset} defines no class pairs (seq-cifar10 does); use --noise_type sym"),
        (values["blurry"] and dataset_cls.DOMAIN_IL,
         f"--blurry moves samples between tasks of different classes, but {dataset} is domain-incremental"),
        (values["blurry"] and model_cls.JOINT, f"--blurry: --model {model_name} trains every task at once"),
        (values["task_free"] and model_cls.NEEDS_BOUNDARIES,
         f"--task_free 1: --model {model_name} needs task boundaries (begin_task/end_task or the task number)"),
        (values["task_free"] and mask == 1,
         "--task_free 1 gives no tasks to mask to; use --masked_softmax batch, seen or 0"),
    ]
    if values["seeds"]:  # what the stacked trainer does not mirror (utils/stacked.py)
        refusals += [(values[name] not in (0, None, "epochs"), f"--seeds does not support --{name} yet; run one "
                      f"process per seed") for name in ("fitting_mode", "blurry", "task_free", "noise_rate")]
        refusals.append((mask in BOUNDARY_FREE_MASKS, f"--seeds does not support --masked_softmax {mask} yet; run "
                                                      f"one process per seed"))
    for refused, why in refusals:
        if refused:
            raise ValueError(why)
