"""The command line: Mammoth's flag names, one-line errors, and how defaults are resolved.

Every flag defaults to ``None`` in the parser so that flags given explicitly
can be told apart.  Values are then resolved in this order: the command line,
the model alias (``orthermr`` fixes ``--classifier fno --masked_softmax 1``),
``--load_best_args``, the dataset's protocol (epochs, batch size, backbone),
and finally the defaults below.
"""
from __future__ import annotations

import argparse
import os
import sys

from backbone import backbone_names
from backbone.heads import get_head_class, head_names
from datasets import dataset_names, get_dataset_class
from models import get_model_class, model_aliases, model_names
from utils.best_args import best_args
from utils.cli import (OneLineParser, binary, non_negative, non_negative_int, positive, resolve_device,
                       seed, switch)
from utils.flags import results_name

# `python main.py` with no arguments: masked-FNO ER on the embedded digits benchmark.
DEFAULT_ARGV = ["--dataset", "seq-digits", "--model", "er", "--classifier", "fno",
                "--masked_softmax", "1", "--buffer_size", "200", "--load_best_args"]

DEFAULTS = {
    "classifier": "fc", "masked_softmax": 0, "buffer_size": 0, "seed": 0, "data_path": "data",
    "load_best_args": False, "nowand": 0, "amp": "none", "channels_last": 0, "compile": 0,
    "collapse_metrics": 0, "results_file": None, "results_dir": None, "rebuild_cache": 0,
    "wandb_project": None, "wandb_entity": None, "wandb_name": None, "checkpoint_dir": None, "resume": False,
}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_mode(text: str):
    """0 (off), 1 (torch.compile's default mode) or a mode name; returns 0 or the mode name."""
    if text == "0":
        return 0
    if text == "1":
        return "default"
    if text not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(f"expected 0, 1 or a mode ({', '.join(COMPILE_MODES)}), got {text!r}")
    return text


def build_parser() -> OneLineParser:
    aliases = model_aliases()
    p = OneLineParser(prog="main.py", description="Continual learning with FC or FNO classifiers. "
                      "Run with no arguments for a quick demo: " + " ".join(DEFAULT_ARGV),
                      argument_default=None)
    g = p.add_argument_group("experiment")
    g.add_argument("--dataset", choices=dataset_names(), help="benchmark (required)")
    g.add_argument("--model", choices=model_names() + sorted(aliases),
                   help="method (required); aliases: " + ", ".join(
                       f"{a}={n}+{'/'.join(f'{k}={v}' for k, v in f.items())}" for a, (n, f) in sorted(aliases.items())))
    g.add_argument("--backbone", choices=backbone_names(), help="default: the dataset's")
    g.add_argument("--classifier", choices=head_names(),
                   help="head (default fc): fc (learnable, with bias), fno (fixed non-negative orthogonal), etf "
                        "(fixed simplex ETF), orth (fixed signed orthogonal); note the demo (no arguments) runs fno")
    g.add_argument("--masked_softmax", type=binary, metavar="{0,1}",
                   help="1: the authors' masked methods (stream logits masked to the sample's task; ER/DER++ with "
                        "separate stream and replay passes, DER++ storing post-step logits); 0 (default): Mammoth's "
                        "ER (one forward pass over stream + replay) and DER++ (pre-step logits)")
    g.add_argument("--buffer_size", type=non_negative_int, help="replay buffer size (required by rehearsal methods)")
    g.add_argument("--load_best_args", type=switch, nargs="?", const=True, metavar="{0,1}",
                   help="use the paper's hyper-parameters for dataset/model/buffer; flags given explicitly win "
                        "(unlike the authors' code, where the table silently overrides them)")
    h = p.add_argument_group("hyper-parameters")
    h.add_argument("--lr", type=positive(float), help="learning rate")
    h.add_argument("--minibatch_size", type=positive(int), help="replay batch size (default: --batch_size)")
    h.add_argument("--batch_size", type=positive(int), help="stream batch size (default: the dataset's)")
    h.add_argument("--n_epochs", type=positive(int), help="epochs per task (default: the dataset's)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=seed, help="seed of every random stream (default 0)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    r.add_argument("--data_path", help="where datasets live / are downloaded (default ./data)")
    r.add_argument("--results_file", help="write the results here as JSON (atomically)")
    r.add_argument("--results_dir", help="write the results as JSON into this directory, the file named from "
                   "the flags given (as the grid runner names it; for wandb sweep agents)")
    r.add_argument("--rebuild_cache", type=binary, metavar="{0,1}",
                   help="1: decode the dataset's files again and rewrite its decoded cache (seq-tinyimg), e.g. "
                        "after replacing data files by hand")
    r.add_argument("--checkpoint_dir", help="save a checkpoint here after every task (atomically)")
    r.add_argument("--resume", type=switch, nargs="?", const=True,
                   help="continue from the last task saved in --checkpoint_dir (a fresh start when there is none)")
    w = p.add_argument_group("wandb (on when a project is given, by flag or WANDB_PROJECT)")
    w.add_argument("--nowand", type=binary, help="1 disables wandb logging")
    w.add_argument("--wandb_project", help="wandb project (default: $WANDB_PROJECT; none: no logging)")
    w.add_argument("--wandb_entity", help="wandb entity (user or team)")
    w.add_argument("--wandb_name", help="wandb run name (default: wandb's)")
    r.add_argument("--collapse_metrics", type=binary, help="1 computes neural-collapse metrics after each task")
    s = p.add_argument_group("speed")
    s.add_argument("--amp", choices=("none", "bf16"), help="autocast precision (default none)")
    s.add_argument("--channels_last", type=binary, help="channels-last memory format for conv nets (0|1)")
    s.add_argument("--compile", type=_compile_mode,
                   help="torch.compile the network: 0, 1 (default mode) or a mode name, e.g. reduce-overhead "
                        "(CUDA graphs on CUDA)")
    s.add_argument("--num_threads", type=positive(int, high=os.cpu_count() or 1),
                   help="CPU threads for torch (default: the dataset's choice, else torch's)")
    for owners, flags in owned_flags().items():
        group = p.add_argument_group(f"flags of {', '.join(owners)}")
        for name, flag in flags.items():
            default = "" if flag.default is None else f" (default {flag.default})"
            group.add_argument(f"--{name}", type=flag.type, metavar=flag.metavar,
                               help=flag.help + (" (required)" if flag.required else default))
    return p


def flag_owners() -> dict:
    """flag name -> (its Flag, the names of the methods and heads declaring it), over every registered class."""
    owners: dict = {}
    classes = [(n, get_model_class(n)) for n in model_names()] + [(n, get_head_class(n)) for n in head_names()]
    for owner, cls in classes:
        for name, flag in cls.FLAGS.items():
            owners.setdefault(name, (flag, []))[1].append(owner)
    return owners


def owned_flags() -> dict:
    """(owner names) -> {flag name: Flag}: the flags that methods and heads declare, grouped for --help."""
    groups: dict = {}
    for name, (flag, owners) in flag_owners().items():
        groups.setdefault(tuple(owners), {})[name] = flag
    return groups


def parse_args(argv: list | None = None) -> argparse.Namespace:
    """Parse and resolve a command line; invalid values exit with a one-line error and code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        print("No arguments given: running the embedded demo, main.py " + " ".join(DEFAULT_ARGV), flush=True)
        argv = list(DEFAULT_ARGV)
    ns = parser.parse_args(argv)
    try:
        return resolve(ns)
    except ValueError as exc:
        parser.error(str(exc))


def resolve(ns: argparse.Namespace) -> argparse.Namespace:
    explicit = {k: v for k, v in vars(ns).items() if v is not None}
    for required in ("dataset", "model"):
        if required not in explicit:
            raise ValueError(f"--{required} is required (valid choices: "
                             f"{', '.join(dataset_names() if required == 'dataset' else model_names())})")
    values = dict(DEFAULTS)
    aliases = model_aliases()
    model = explicit["model"]
    if model in aliases:
        model, fixed = aliases[model]
        for key, value in fixed.items():
            if key in explicit and explicit[key] != value:
                raise ValueError(f"--model {explicit['model']} implies --{key} {value}, "
                                 f"but --{key} {explicit[key]} was given")
        values.update(fixed)
    dataset_cls = get_dataset_class(explicit["dataset"])
    values.update(backbone=dataset_cls.BACKBONE, n_epochs=dataset_cls.N_EPOCHS,
                  batch_size=dataset_cls.BATCH_SIZE, num_threads=dataset_cls.CPU_THREADS)
    buffer_size = explicit.get("buffer_size", values["buffer_size"])
    if explicit.get("load_best_args"):
        try:
            values.update(best_args(explicit["dataset"], model, buffer_size))
        except KeyError as exc:
            raise ValueError(f"--load_best_args: {exc.args[0]}") from None
    values.update({k: v for k, v in explicit.items() if k != "model"})
    values["model"] = model
    values["model_name"] = explicit["model"]
    values.setdefault("lr", None)
    if values.get("minibatch_size") is None:
        values["minibatch_size"] = values["batch_size"]

    model_cls = get_model_class(model)
    if model_cls.USES_BUFFER and values["buffer_size"] <= 0:
        raise ValueError(f"--model {explicit['model']} replays from a buffer: give --buffer_size > 0 "
                         f"(got {values['buffer_size']})")
    own = {**model_cls.FLAGS, **get_head_class(values["classifier"]).FLAGS}
    for name, (flag, owners) in flag_owners().items():
        if name in own:
            if values.get(name) is None:
                values[name] = flag.default
        elif name in explicit:
            raise ValueError(f"--{name} is a flag of {', '.join(owners)}, not of --model {model} "
                             f"--classifier {values['classifier']}")
        else:
            values[name] = None
    missing = ["lr"] * (values.get("lr") is None) + [n for n, f in model_cls.FLAGS.items()
                                                      if f.required and values.get(n) is None]
    if missing:
        raise ValueError(f"--model {explicit['model']} needs " + ", ".join(f"--{m}" for m in missing)
                         + " (give it, or use --load_best_args)")
    values["device"] = str(resolve_device(values.get("device")))
    if values["resume"] and not values["checkpoint_dir"]:
        raise ValueError("--resume needs --checkpoint_dir (the directory holding the checkpoint)")
    if values["results_dir"] is not None:
        if "results_file" in explicit:
            raise ValueError("give either --results_file or --results_dir, not both")
        values["results_file"] = os.path.join(values["results_dir"], results_name(explicit) + ".json")
    return argparse.Namespace(**values)
