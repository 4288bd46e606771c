"""The command line: Mammoth's flag names, one-line errors, and how defaults are resolved.

Every flag defaults to ``None`` in the parser so that flags given explicitly
can be told apart.  Values are then resolved in this order: the command line,
the model alias (``orthermr`` fixes ``--classifier fno --masked_softmax 1``),
``--load_best_args``, the dataset's protocol (epochs, batch size, backbone),
and finally the defaults below.

Without ``--results_file`` or ``--results_dir`` the results go to
``results/<dataset>/<name>.json`` under the current directory, the name made
from the flags given as the grid runner makes it (``utils.flags.results_name``);
``--results_file none`` writes no file.
"""
from __future__ import annotations

import argparse
import os
import sys

from backbone import backbone_names, get_backbone_class
from backbone.heads import get_head_class, head_names
from datasets import dataset_names, get_dataset_class
from models import get_model_class, model_aliases, model_names
from utils.best_args import best_args
from utils.cli import OneLineParser, binary, bounded, non_negative_int, positive, seed, switch, type_metavar
from utils.flags import NAME_FIELD, fill_name, results_name
from utils.run_flags import RUN_DEFAULTS, add_run_flags, resolve_shared_flags
from utils.seeds import parse_seeds, results_template
from utils.stream_args import (ONLINE_PROTOCOL, STREAM_DEFAULTS, add_stream_flags, check_stream,
                               masked_softmax_choice)

# `python main.py` with no arguments: masked-FNO ER on the embedded digits benchmark.
DEFAULT_ARGV = ["--dataset", "seq-digits", "--model", "er", "--classifier", "fno",
                "--masked_softmax", "1", "--buffer_size", "200", "--load_best_args"]

DEFAULTS = dict(RUN_DEFAULTS, **{
    "classifier": "fc", "masked_softmax": 0, "buffer_size": 0, "load_best_args": False, "amp": "none",
    "channels_last": 0, "compile": 0, "collapse_metrics": 0, "rebuild_cache": 0, "validation": 0, "class_order": 0,
    "eval_every": 0, "debug_mode": 0, "synthetic": 0, "max_steps_per_task": None, "n_tasks": None, "seeds": None,
    "deterministic": 0, **STREAM_DEFAULTS,
})
RESULTS_ROOT = "results"  # the default results folder, relative to the current directory
NO_RESULTS = "none"       # --results_file none: write no results file
DEBUG_STEPS = 5           # --debug_mode 1: optimizer steps per task unless --max_steps_per_task says otherwise


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
                      "Run with no arguments for a quick demo: " + " ".join(DEFAULT_ARGV) + ". Mind the "
                      "defaults: the head is the learnable FC, unmasked (--classifier fc --masked_softmax 0), "
                      "while the demo runs the masked FNO head (--classifier fno --masked_softmax 1).",
                      argument_default=None)
    g = p.add_argument_group("experiment", "defaults: --classifier fc --masked_softmax 0 (FC head, unmasked); "
                             "the demo (no arguments) is masked FNO: --classifier fno --masked_softmax 1")
    g.add_argument("--dataset", choices=dataset_names(), help="benchmark (required)")
    g.add_argument("--model", choices=model_names() + sorted(aliases),
                   help="method (required); aliases: " + ", ".join(
                       f"{a}={n}+{'/'.join(f'{k}={v}' for k, v in f.items())}" for a, (n, f) in sorted(aliases.items())))
    g.add_argument("--backbone", choices=backbone_names(), help="default: the dataset's")
    g.add_argument("--classifier", choices=head_names(),
                   help="head (default fc): fc (learnable, with bias), fno (fixed non-negative orthogonal), etf "
                        "(fixed simplex ETF), orth (fixed signed orthogonal); note the demo (no arguments) runs fno")
    g.add_argument("--masked_softmax", type=masked_softmax_choice, metavar="{0,1,batch,seen}",
                   help="1: the authors' masked methods (stream logits masked to the sample's task; ER/DER++ with "
                        "separate stream and replay passes, DER++ storing post-step logits); 0 (default): Mammoth's "
                        "ER (one forward pass over stream + replay) and DER++ (pre-step logits); without task "
                        "boundaries (docs/online.md), as 1 but masked to the classes present in the stream batch "
                        "(batch) or to the classes the stream has shown so far (seen)")
    g.add_argument("--buffer_size", type=non_negative_int, metavar="INT>=0",
                   help="replay buffer size (required by rehearsal methods)")
    g.add_argument("--load_best_args", type=switch, nargs="?", const=True, metavar="{0,1}",
                   help="use the paper's hyper-parameters for dataset/model/buffer; flags given explicitly win "
                        "(unlike the authors' code, where the table silently overrides them)")
    h = p.add_argument_group("hyper-parameters")
    h.add_argument("--lr", type=positive(float), metavar="FLOAT>0", help="learning rate")
    h.add_argument("--minibatch_size", type=positive(int), metavar="INT>0",
                   help="replay batch size (default: --batch_size)")
    h.add_argument("--batch_size", type=positive(int), metavar="INT>0", help="stream batch size (default: the dataset's)")
    h.add_argument("--n_epochs", type=positive(int), metavar="INT>0", help="epochs per task (default: the dataset's)")
    v = p.add_argument_group("protocol")
    v.add_argument("--validation", type=bounded(float, 0, 99), metavar="PCT",
                   help="hold out PCT percent (0-99) of each task's training data, stratified by class and drawn "
                        "from --seed, and report accuracies on it too (results: 'validation'); the headline "
                        "numbers stay on the test split (default 0: none held out)")
    v.add_argument("--class_order", type=seed, metavar="SEED",
                   help="permute the classes with this seed before they are cut into tasks (masking, the FNO "
                        "partition and Task-IL follow the permuted tasks; results: 'class_order'); 0 (default): "
                        "the natural order")
    v.add_argument("--eval_every", type=non_negative_int, metavar="K",
                   help="also evaluate every K optimizer steps within a task (anytime accuracy, results: "
                        "'anytime'); 0 (default): only after each task")
    v.add_argument("--debug_mode", type=binary, metavar="{0,1}",
                   help=f"1: a smoke test, {DEBUG_STEPS} steps per task (unless --max_steps_per_task) and "
                        "evaluation on the first 100 samples of each task; the results say \"partial\": true")
    v.add_argument("--synthetic", type=binary, metavar="{0,1}",
                   help="1: a smoke test on generated data of the benchmark's shapes and classes (a few images per "
                        "class), no files read; the results say \"source\": \"synthetic\" and \"partial\": true")
    v.add_argument("--max_steps_per_task", type=positive(int), metavar="N",
                   help="stop each task after N optimizer steps (a partial run)")
    v.add_argument("--n_tasks", type=positive(int), metavar="N",
                   help="stop after the first N tasks (a partial run when fewer than the benchmark's)")
    r = add_run_flags(p, "task", results_metavar="{PATH,none}",
                      results_help=f"write the results here as JSON (atomically); default {RESULTS_ROOT}/<dataset>/"
                                   "<name>.json under the current directory, the name made from the flags given; "
                                   "none: no file")
    r.add_argument("--seeds", type=parse_seeds, metavar="A-B|A,B,...",
                   help="train several seeds (1-10, 1,4,7) as one stacked model in one process, each with exactly "
                        "its single run's random streams, results file and checkpoint (DIR/seed-S); a "
                        "--results_file must contain {seed}; see docs/stacked.md")
    r.add_argument("--rebuild_cache", type=binary, metavar="{0,1}",
                   help="1: decode the dataset's files again and rewrite its decoded cache (seq-tinyimg), e.g. "
                        "after replacing data files by hand")
    r.add_argument("--collapse_metrics", type=binary, metavar="{0,1}",
                   help="1 computes neural-collapse metrics after each task")
    s = p.add_argument_group("speed")
    s.add_argument("--amp", choices=("none", "bf16"), help="autocast precision (default none)")
    s.add_argument("--channels_last", type=binary, metavar="{0,1}", help="channels-last memory format for conv nets")
    s.add_argument("--compile", type=_compile_mode, metavar="{" + ",".join(("0", "1") + COMPILE_MODES) + "}",
                   help="torch.compile the network: 0 (default), 1 (default mode) or a mode name, e.g. "
                        "reduce-overhead (CUDA graphs on CUDA)")
    s.add_argument("--deterministic", type=binary, metavar="{0,1}",
                   help="CUDA: 1 picks deterministic cuDNN kernels (reruns on the same GPU give the same numbers); "
                        "0 (default) lets cuDNN benchmark its kernels for each shape, faster for the fixed shapes "
                        "of a run (the CPU is deterministic either way)")
    s.add_argument("--num_threads", type=positive(int, high=os.cpu_count() or 1), metavar=f"1..{os.cpu_count() or 1}",
                   help="CPU threads for torch (default: the dataset's choice, else torch's)")
    add_stream_flags(p)
    varying = varying_flags()
    for owners, flags in owned_flags().items():
        group = p.add_argument_group(f"flags of {', '.join(owners)}")
        for name, flag in flags.items():
            if name in varying:  # each owner's own meaning and default; its owner parses the text
                group.add_argument(f"--{name}", type=str, metavar=flag.metavar or type_metavar(flag.type),
                                   help="; ".join(_flag_help(f) if f.help.startswith(f"{owner}:") else f"{owner}: {_flag_help(f)}"
                                                 for owner, f in varying[name].items()))
            else:
                group.add_argument(f"--{name}", type=flag.type, metavar=flag.metavar or type_metavar(flag.type),
                                   help=_flag_help(flag))
    return p


def _flag_help(flag) -> str:
    return flag.help + (" (required)" if flag.required else "" if flag.default is None else f" (default {flag.default})")


class FlagConflict(ValueError):
    """Two owners that can meet in one run declare one flag differently: the one-line reason."""


def type_signature(parse) -> tuple:
    """What a flag type parses, comparable across owners: the function and the values it closes over
    (``bounded(float, 0, 1)`` built twice is one type)."""
    cells = tuple(c.cell_contents for c in getattr(parse, "__closure__", None) or ())
    return getattr(parse, "__module__", None), getattr(parse, "__qualname__", repr(parse)), repr(cells)


def flag_signature(flag) -> tuple:
    return type_signature(flag.type), repr(flag.default), flag.help, flag.required, flag.metavar


def declared_flags() -> list:
    """(kind, owner name, flag name, Flag) for every flag a registered method, head or backbone declares."""
    classes = [("method", n, get_model_class(n)) for n in model_names()]
    classes += [("head", n, get_head_class(n)) for n in head_names()]
    classes += [("backbone", n, get_backbone_class(n)) for n in backbone_names()]
    return [(kind, owner, name, flag) for kind, owner, cls in classes
            for name, flag in getattr(cls, "FLAGS", {}).items()]


def flag_owners() -> dict:
    """flag name -> (its Flag, the names of the methods, heads and backbones declaring it).

    Owners of different kinds meet in one run (a method, its head, its backbone): a flag they share must
    agree in type, default and meaning, else ``FlagConflict`` names both.  Owners of one kind are
    alternatives (one method per run) and may differ: each run then uses its own owner's flag."""
    owners: dict = {}
    first_of_kind: dict = {}
    for kind, owner, name, flag in declared_flags():
        for other_kind, (other, other_flag) in first_of_kind.get(name, {}).items():
            if other_kind != kind and flag_signature(other_flag) != flag_signature(flag):
                raise FlagConflict(f"--{name} is declared differently by {other_kind} {other} ({other_flag.help!r}, "
                                   f"default {other_flag.default!r}) and {kind} {owner} ({flag.help!r}, default "
                                   f"{flag.default!r}): a flag shared by a method, a head or a backbone must agree "
                                   f"in type, default and meaning; give one of them another name")
        first_of_kind.setdefault(name, {}).setdefault(kind, (owner, flag))
        owners.setdefault(name, (flag, []))[1].append(owner)
    return owners


def varying_flags() -> dict:
    """flag name -> {owner: Flag} for the flags whose owners (alternatives of one kind) declare them
    differently: the parser keeps their text, and the run's own owner parses it (``resolve``)."""
    by_name: dict = {}
    for _, owner, name, flag in declared_flags():
        by_name.setdefault(name, {})[owner] = flag
    return {name: flags for name, flags in by_name.items()
            if len({flag_signature(f) for f in flags.values()}) > 1}


def owned_flags() -> dict:
    """(owner names) -> {flag name: Flag}: the flags that methods and heads declare, grouped for --help."""
    groups: dict = {}
    for name, (flag, owners) in flag_owners().items():
        groups.setdefault(tuple(owners), {})[name] = flag
    return groups


def parse_args(argv: list | None = None) -> argparse.Namespace:
    """Parse and resolve a command line; invalid values exit with a one-line error and code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except FlagConflict as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
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
    if explicit.get("online"):
        values.update(ONLINE_PROTOCOL)
    buffer_size = explicit.get("buffer_size", values["buffer_size"])
    model_cls = get_model_class(model)
    owners_of = flag_owners()
    if explicit.get("load_best_args"):
        try:
            best = best_args(explicit["dataset"], model, buffer_size, bool(explicit.get("online")))
        except KeyError as exc:
            raise ValueError(f"--load_best_args: {exc.args[0]}") from None
        foreign = sorted(k for k in best if k in owners_of and k not in model_cls.FLAGS)
        if foreign:  # a head's or backbone's flag is that owner's, never set by a method's table
            raise ValueError(f"--load_best_args: the table of {model} sets " + ", ".join(
                f"--{k} (a flag of {', '.join(owners_of[k][1])})" for k in foreign)
                + "; a best-arguments row may set only the method's own flags and the shared ones")
        values.update(best)
    values.update({k: v for k, v in explicit.items() if k != "model"})
    values["model"] = model
    values["model_name"] = explicit["model"]
    values.setdefault("lr", None)
    if values.get("minibatch_size") is None:
        values["minibatch_size"] = values["batch_size"]

    if model_cls.USES_BUFFER and values["buffer_size"] <= 0:
        raise ValueError(f"--model {explicit['model']} replays from a buffer: give --buffer_size > 0 "
                         f"(got {values['buffer_size']})")
    backbone_cls = get_backbone_class(values["backbone"])
    own = {**model_cls.FLAGS, **get_head_class(values["classifier"]).FLAGS, **getattr(backbone_cls, "FLAGS", {})}
    varying = varying_flags()
    for name, (_, owners) in owners_of.items():
        if name in own and name in varying and name in explicit:  # the text, parsed by this run's owner
            try:
                values[name] = own[name].type(explicit[name])
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ValueError(f"argument --{name}: {exc}") from None
        if name in own:
            if values.get(name) is None:
                values[name] = own[name].default  # the chosen method's own default (methods may differ)
        elif name in explicit:
            raise ValueError(f"--{name} is a flag of {', '.join(owners)}, not of --model {model} "
                             f"--classifier {values['classifier']} --backbone {values['backbone']}")
        else:
            values[name] = None
    if values.get("lr") is None and model_cls.DEFAULT_LR:
        values["lr"] = model_cls.DEFAULT_LR  # the method's published rate
    missing = ["lr"] * (values.get("lr") is None and model_cls.USES_LR) + [n for n, f in model_cls.FLAGS.items()
                                                      if f.required and values.get(n) is None]
    if missing:
        raise ValueError(f"--model {explicit['model']} needs " + ", ".join(f"--{m}" for m in missing)
                         + " (give it, or use --load_best_args)")
    resolve_shared_flags(values, explicit)
    check_protocol(values, dataset_cls, model_cls, explicit["model"])
    model_cls.check_args(argparse.Namespace(**values), dataset_cls.N_TASKS, dataset_cls.DOMAIN_IL)
    check_stream(values, explicit, dataset_cls, model_cls, explicit["model"])
    if hasattr(backbone_cls, "preflight"):  # pretrained weights: found, or refused before any data is read
        backbone_cls.preflight(values)
    if values["debug_mode"] and values["max_steps_per_task"] is None:
        values["max_steps_per_task"] = DEBUG_STEPS
    values["results_file"] = results_file(values, explicit)
    if values["seeds"]:
        stacked_outputs(values, explicit)
    values["checkpoint_dir"] = named_checkpoint_dir(values, explicit)
    return argparse.Namespace(**values)


def named_checkpoint_dir(values: dict, explicit: dict):
    """``--checkpoint_dir`` with ``{name}`` replaced by the run's results name (the name ``--results_dir``
    gives its results file), so that the runs of a sweep each resume their own folder.  With ``--seeds``
    the name holds ``{seed}``, which every seed fills in (``utils.seeds.seed_args``) to get its single
    run's folder."""
    given = values["checkpoint_dir"]
    if not given or NAME_FIELD not in given:
        return given
    if not values["seeds"]:
        return fill_name(given, results_name(explicit))
    try:
        template = results_template("", explicit, values["seeds"])  # "<name with seed={seed}>.json"
    except ValueError:
        raise ValueError(f"--checkpoint_dir {given} with --seeds: these flags give results names shortened "
                         f"with a hash, which no {{seed}} template can reproduce; give a --checkpoint_dir "
                         f"without {NAME_FIELD} (each seed then checkpoints into DIR/seed-S)") from None
    return fill_name(given, template[:-len(".json")])


def stacked_outputs(values: dict, explicit: dict) -> None:
    """--seeds: every seed's results file named as its single run's (a ``{seed}`` template)."""
    if "seed" in explicit:
        raise ValueError("give either --seed or --seeds, not both")
    seeds, given = values["seeds"], explicit.get("results_file")
    values["seed"] = seeds[0]
    if given is not None and given.lower() != NO_RESULTS:
        if "{seed}" not in given:
            raise ValueError(f"--results_file {given} with --seeds: put {{seed}} in the name so that every seed "
                             f"gets its own file, e.g. results/run-s{{seed}}.json")
        return
    if values["results_file"] is not None:
        folder = values["results_dir"] or os.path.join(RESULTS_ROOT, values["dataset"])
        values["results_file"] = results_template(folder, explicit, seeds)


def check_protocol(values: dict, dataset_cls, model_cls, model_name: str) -> None:
    """Refuse what a benchmark's protocol does not define (one line each)."""
    dataset = values["dataset"]
    if values["n_tasks"] is not None:
        if values["n_tasks"] > dataset_cls.N_TASKS:
            raise ValueError(f"--n_tasks {values['n_tasks']}: {dataset} has {dataset_cls.N_TASKS} tasks")
        if model_cls.JOINT:
            raise ValueError(f"--n_tasks: --model {model_name} trains every task at once, in one stage")
    if dataset_cls.DOMAIN_IL:
        domain = (f"{dataset} is domain-incremental (every task holds all {dataset_cls.N_CLASSES_PER_TASK} classes, "
                  f"the tasks differ in their inputs)")
        if values["masked_softmax"] == 1:
            implied = f" (implied by --model {model_name})" if model_name != values["model"] else ""
            raise ValueError(f"--masked_softmax 1{implied} masks the stream logits to the sample's task's classes, "
                             f"but {domain}: use --masked_softmax 0")
        if values["class_order"]:
            raise ValueError(f"--class_order permutes the classes that are cut into tasks, but {domain}")
        if values["collapse_metrics"]:
            raise ValueError(f"--collapse_metrics selects the seen tasks' training data by class, but {domain}")


def results_file(values: dict, explicit: dict):
    """Where the results go: --results_file (``none``: nowhere), --results_dir/<name>.json, or by default
    results/<dataset>/<name>.json under the current directory."""
    given = explicit.get("results_file")
    if values["results_dir"] is not None:
        if given is not None:
            raise ValueError("give either --results_file or --results_dir, not both")
        return os.path.join(values["results_dir"], results_name(explicit) + ".json")
    if given is not None:
        return None if given.lower() == NO_RESULTS else given
    return os.path.join(RESULTS_ROOT, values["dataset"], results_name(explicit) + ".json")
