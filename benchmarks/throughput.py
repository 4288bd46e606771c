"""Training and evaluation throughput of the image benchmarks, on synthetic data of the exact shapes.

Two modes:

* the table (default): for each dataset, method (ER, DER++) and head (FC, FNO), masked softmax
  on, the paper's hyper-parameters (``--load_best_args``), ``--warmup`` optimizer steps on task 1,
  then ``--steps`` timed steps on task 2 through the real trainer (``utils.training.train_stage``)
  and one timed evaluation pass; prints optimizer steps/s, stream images/s, ms/step, evaluation
  images/s and seconds, peak device memory (CUDA) and peak host RSS;
* ``--protocol``: the whole 50-epoch seq-cifar10 masked-FNO ER run (buffer 200), end to end
  through ``main``'s code path on synthetic CIFAR-10 files written in torchvision's layout,
  printing its wall time;
* ``--seeds 1,4,16,64``: stacked runs (``utils.stacked``, ``main.py --seeds``): for each
  configuration the single-run row, then N seeds trained as one stacked model for each N, with
  the aggregate rate (run-steps/s: optimizer steps of all N runs per second) and images/s; then
  the hours the paper's whole CL table (480 runs at the protocol's step counts) would take at
  each N's measured rates.  ``--dataset seq-mnist`` times the MLP benchmark.

No network and no real data are needed.  Examples (from the repository root)::

    python -m benchmarks.throughput --device cuda --steps 500 --warmup 100
    python -m benchmarks.throughput --device cuda --amp bf16 --channels_last 1 --compile reduce-overhead
    python -m benchmarks.throughput --device cpu --dataset seq-cifar10 --steps 3 --warmup 2 --eval_images 64
    python -m benchmarks.throughput --protocol --device cuda --amp bf16
    python -m benchmarks.throughput --device cuda --dataset seq-cifar10 --models er --heads fno --seeds 1,4,16,64
    python -m benchmarks.throughput --device cpu --dataset seq-mnist --models er --heads fno --seeds 1,4,16,64
"""
from __future__ import annotations

import argparse
import gc
import math
import resource
import tempfile
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from datasets import get_dataset_class
from datasets.utils.cifar_io import write_cifar
from datasets.utils.continual_dataset import Split
from utils.args import parse_args
from utils.progress import ProgressBar
from utils.seeds import seed_args
from utils.stacked.trainer import train_stacked_stage
from utils.training import build_run, evaluate, run_experiment, stages, task_data, train_stage

DATASETS = ("seq-cifar10", "seq-cifar100", "seq-tinyimg")
MLP_DATASETS = ("seq-mnist",)  # timed on request (--dataset seq-mnist), not by the default table
SIZES = {  # (training images per class, test images per class) of the real benchmarks
    "seq-cifar10": (5000, 1000), "seq-cifar100": (500, 100), "seq-tinyimg": (500, 50), "seq-mnist": (6000, 1000)}
# dataset -> (epochs per task, training images per task, tasks, batch size) of the paper's protocol
PROTOCOL = {"seq-mnist": (1, 12000, 5, 10), "seq-cifar10": (50, 10000, 5, 32), "seq-cifar100": (50, 5000, 10, 32),
            "seq-tinyimg": (100, 10000, 10, 32)}
# The paper's CL table: 4 benchmarks x (ER, DER++) x (FC, FNO) x buffers 200 / 500 / 5120 x 10 seeds.
TABLE_METHODS, TABLE_HEADS, TABLE_RUNS_PER_CELL = ("er", "derpp"), ("fc", "fno"), 3 * 10


def protocol_steps(dataset: str, batch_size: int | None = None) -> int:
    """Optimizer steps of one run of the paper's protocol on ``dataset``."""
    epochs, per_task, tasks, batch = PROTOCOL[dataset]
    return tasks * epochs * math.ceil(per_task / (batch_size or batch))


# ----------------------------------------------------------------------------- synthetic data

def synthetic_splits(dataset_cls, device: torch.device, seed: int):
    """Random uint8 images and class-balanced labels with the benchmark's shapes and sizes, made
    directly on ``device`` (so a CUDA run does not hold the images in host memory)."""
    per_train, per_test = SIZES[dataset_cls.NAME]
    k = dataset_cls.N_TASKS * dataset_cls.N_CLASSES_PER_TASK
    gen = torch.Generator(device=device).manual_seed(seed)

    def split(per_class):
        n = per_class * k
        x = torch.randint(0, 256, (n,) + tuple(dataset_cls.INPUT_SHAPE), dtype=torch.uint8,
                          device=device, generator=gen)
        return Split(x, torch.arange(n, device=device) // per_class)

    return split(per_train), split(per_test)


def synthetic_dataset(dataset_cls, splits):
    """An instance of the real benchmark class (protocol, transform, scheduler) serving ``splits``."""

    class Synthetic(dataset_cls):
        def load_splits(self):
            return splits

    return Synthetic("unused")


# ----------------------------------------------------------------------------- measurement

def reset_host_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def host_peak_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # never reset: peak so far


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_args(opts, dataset: str, model: str, head: str, extra=()):
    argv = ["--dataset", dataset, "--model", model, "--classifier", head, "--masked_softmax", "1",
            "--buffer_size", str(opts.buffer_size), "--load_best_args", "--device", opts.device,
            "--amp", opts.amp, "--channels_last", str(opts.channels_last), "--compile", opts.compile,
            "--seed", str(opts.seed), "--n_epochs", "1", *extra]
    if opts.backbone:
        argv += ["--backbone", opts.backbone]
    return parse_args(argv)


def reset_peaks(device: torch.device) -> None:
    """Start a measurement's peak-memory counters (device and host) from the current state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_host_peak()


def measure(opts, dataset: str, model: str, head: str, splits) -> dict:
    """Warm up on task 1, time ``opts.steps`` steps on task 2, then time one evaluation pass."""
    device = torch.device(opts.device)
    args = run_args(opts, dataset, model, head)
    reset_peaks(device)
    run = build_run(args, synthetic_dataset(get_dataset_class(dataset), splits))
    tasks = stages(run)
    bs = args.batch_size

    def first_steps(task, n_steps):
        idx = tasks[task].indices
        return task_data(run, task, idx.repeat(math.ceil(n_steps * bs / len(idx)))[: n_steps * bs])

    train_stage(run, first_steps(0, opts.warmup))  # fills the buffer; compiles if asked
    sync(device)
    start = time.perf_counter()
    train_stage(run, first_steps(1, opts.steps))   # returns a float: waits for the device
    sync(device)
    train_s = time.perf_counter() - start
    if opts.profile:
        profile_steps(run, first_steps(1, opts.profile), device)

    n_eval = len(run.test.y) if opts.eval_images is None else min(opts.eval_images, len(run.test.y))
    run.test = run.test.subset(torch.arange(n_eval, device=run.test.y.device))  # keeps each sample's task
    evaluate(run, run.dataset.N_TASKS)  # warm-up (eval-mode kernels, compilation)
    sync(device)
    start = time.perf_counter()
    evaluate(run, run.dataset.N_TASKS)  # returns Python floats: waits for the device
    sync(device)
    eval_s = time.perf_counter() - start

    row = dict(dataset=dataset, model=model, head=head, steps_s=opts.steps / train_s,
               images_s=opts.steps * bs / train_s, ms_step=1000 * train_s / opts.steps,
               eval_images=n_eval, eval_s=eval_s, eval_images_s=n_eval / eval_s,
               host_mib=host_peak_mib(), device_mib=None, reserved_mib=None)
    if device.type == "cuda":
        row["device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    del run
    return row


def profile_steps(run, data, device: torch.device, rows: int = 15) -> None:
    """Profile a few more training steps: the top operators by device (CPU: host) time, and how busy
    the device was over the wall time (low = the host cannot launch kernels fast enough)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        train_stage(run, data)
        sync(device)
    wall_us = 1e6 * (time.perf_counter() - start)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=rows), flush=True)
    if cuda:
        busy = sum(e.self_device_time_total for e in events)
        print(f"device busy {busy / 1e3:.1f} ms of {wall_us / 1e3:.1f} ms wall ({100 * busy / wall_us:.0f}%; "
              f"the rest is host overhead and launch gaps, profiler overhead included)", flush=True)


COLUMNS = [  # title, width; text columns are left-aligned, numbers right-aligned
    ("dataset", 13), ("model", 6), ("head", 4), ("steps/s", 8), ("img/s", 8), ("ms/step", 8),
    ("eval img/s", 10), ("eval s (imgs)", 14), ("peak dev MiB (reserved)", 23), ("peak RSS MiB", 12)]


def format_row(r: dict) -> str:
    dev = "-" if r["device_mib"] is None else f"{r['device_mib']:.0f} ({r['reserved_mib']:.0f})"
    cells = [r["dataset"], r["model"], r["head"], f"{r['steps_s']:.2f}", f"{r['images_s']:.0f}",
             f"{r['ms_step']:.1f}", f"{r['eval_images_s']:.0f}", f"{r['eval_s']:.2f} ({r['eval_images']})",
             dev, f"{r['host_mib']:.0f}"]
    return " | ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))


def header(opts) -> str:
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return (f"device {opts.device} ({name}), torch {torch.__version__}; amp={opts.amp} "
            f"channels_last={opts.channels_last} compile={opts.compile} buffer={opts.buffer_size} "
            f"warmup={opts.warmup} steps={opts.steps}; masked softmax, --load_best_args")


def table(opts) -> None:
    print(header(opts), flush=True)
    print(" | ".join(t.ljust(w) if i < 3 else t.rjust(w) for i, (t, w) in enumerate(COLUMNS)), flush=True)
    device = torch.device(opts.device)
    for dataset in opts.dataset:
        splits = synthetic_splits(get_dataset_class(dataset), device, opts.seed)
        for model in opts.models:
            for head in opts.heads:
                print(format_row(measure(opts, dataset, model, head, splits)), flush=True)
        del splits


# ----------------------------------------------------------------------------- stacked seeds

def measure_stacked(opts, dataset: str, model: str, head: str, splits, n_seeds: int) -> dict:
    """``measure`` for ``n_seeds`` runs (seeds ``opts.seed`` ...) trained as one stacked model: warm up on
    task 1, time ``opts.steps`` stacked steps on task 2 (evaluation is not timed)."""
    device = torch.device(opts.device)
    args = run_args(opts, dataset, model, head)
    reset_peaks(device)
    data = synthetic_dataset(get_dataset_class(dataset), splits)  # one copy of the data for every seed
    runs = [build_run(seed_args(args, opts.seed + i), data) for i in range(n_seeds)]
    bs = args.batch_size

    def first_steps(task, n_steps):
        out = []
        for run in runs:
            idx = stages(run)[task].indices
            out.append(task_data(run, task, idx.repeat(math.ceil(n_steps * bs / len(idx)))[: n_steps * bs]))
        return out

    train_stacked_stage(runs, first_steps(0, opts.warmup))
    sync(device)
    start = time.perf_counter()
    train_stacked_stage(runs, first_steps(1, opts.steps))  # returns floats: waits for the device
    sync(device)
    train_s = time.perf_counter() - start
    row = dict(dataset=dataset, model=model, head=head, seeds=n_seeds, run_steps_s=n_seeds * opts.steps / train_s,
               images_s=n_seeds * opts.steps * bs / train_s, ms_step=1000 * train_s / opts.steps,
               host_mib=host_peak_mib(), device_mib=None, threads=torch.get_num_threads())
    if device.type == "cuda":
        row["device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    del runs
    return row


STACKED_COLUMNS = [("dataset", 13), ("model", 6), ("head", 4), ("seeds", 6), ("run-steps/s", 11), ("img/s", 9),
                   ("ms/step", 8), ("peak dev MiB", 12), ("peak RSS MiB", 12)]


def format_stacked_row(r: dict) -> str:
    """A stacked row; ``seeds`` is ``single`` for the single-run reference (``measure``'s row)."""
    seeds = str(r.get("seeds", "single"))
    rate = r.get("run_steps_s", r.get("steps_s"))
    dev = "-" if r["device_mib"] is None else f"{r['device_mib']:.0f}"
    cells = [r["dataset"], r["model"], r["head"], seeds, f"{rate:.1f}", f"{r['images_s']:.0f}",
             f"{r['ms_step']:.1f}", dev, f"{r['host_mib']:.0f}"]
    return " | ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, STACKED_COLUMNS)))


def table_hours(rates: dict, datasets=DATASETS + MLP_DATASETS) -> tuple:
    """Hours the paper's CL table takes at ``rates`` ((dataset, model, head) -> run-steps/s): 30 runs per
    cell (3 buffers x 10 seeds; a cell's rate is measured at buffer 200, an FC cell may take the FNO
    rate and vice versa); returns (hours, runs covered, runs in the table)."""
    hours, covered, total = 0.0, 0, 0
    for dataset in datasets:
        for model in TABLE_METHODS:
            for head in TABLE_HEADS:
                total += TABLE_RUNS_PER_CELL
                other = TABLE_HEADS[1 - TABLE_HEADS.index(head)]  # the head's cost is negligible: either rate
                rate = rates.get((dataset, model, head)) or rates.get((dataset, model, other))
                if rate:
                    hours += TABLE_RUNS_PER_CELL * protocol_steps(dataset) / rate / 3600
                    covered += TABLE_RUNS_PER_CELL
    return hours, covered, total


def projection_lines(rates_by_n: dict, device: str) -> list:
    """One line per stacked N (and the single run): the CL table's hours at the measured rates."""
    lines = []
    for n, rates in rates_by_n.items():
        hours, covered, total = table_hours(rates)
        what = "one run at a time" if n == "single" else f"{n} seeds per process"
        if not covered:
            lines.append(f"- {device}, {what}: nothing measured")
            continue
        lines.append(f"- {device}, {what}: {hours:.1f} device-hours for the {covered} of the paper's {total} CL-table "
                     f"runs that were measured (protocol step counts, training only, buffer-200 rates)")
    return lines


def table_stacked(opts) -> None:
    print(header(opts) + f"; stacked seeds {','.join(map(str, opts.seeds))}", flush=True)
    print(" | ".join(t.ljust(w) if i < 3 else t.rjust(w) for i, (t, w) in enumerate(STACKED_COLUMNS)), flush=True)
    device = torch.device(opts.device)
    rates_by_n = {"single": {}, **{n: {} for n in opts.seeds}}
    for dataset in opts.dataset:
        splits = synthetic_splits(get_dataset_class(dataset), device, opts.seed)
        for model in opts.models:
            for head in opts.heads:
                row = measure(opts, dataset, model, head, splits)
                rates_by_n["single"][(dataset, model, head)] = row["steps_s"]
                print(format_stacked_row(row), flush=True)
                for n in opts.seeds:
                    try:
                        row = measure_stacked(opts, dataset, model, head, splits, n)
                    except torch.cuda.OutOfMemoryError:
                        print(f"{dataset} {model} {head} {n} seeds: out of device memory", flush=True)
                        continue
                    rates_by_n[n][(dataset, model, head)] = row["run_steps_s"]
                    print(format_stacked_row(row), flush=True)
        del splits
    print("\n".join(projection_lines(rates_by_n, opts.device)), flush=True)


# ----------------------------------------------------------------------------- protocol run

def protocol(opts) -> None:
    """The full seq-cifar10 masked-FNO ER protocol (buffer 200) on synthetic CIFAR-10 files."""
    rng = np.random.RandomState(opts.seed)
    per_train, per_test = opts.protocol_train_per_class, opts.protocol_test_per_class

    def split(per_class):
        y = np.repeat(np.arange(10), per_class)
        return rng.randint(0, 256, (len(y), 3, 32, 32), dtype=np.uint8), y

    with tempfile.TemporaryDirectory(prefix="synthetic-cifar10-") as root:
        write_cifar(root, "cifar10", split(per_train), split(per_test))
        args = run_args(opts, "seq-cifar10", "er", "fno",
                        ["--data_path", root, "--n_epochs", str(opts.protocol_epochs)])  # the last flag wins
        steps = 5 * args.n_epochs * math.ceil(2 * per_train / args.batch_size)
        print(header(opts).split(";")[0] + f"; seq-cifar10 ER masked FNO, buffer {opts.buffer_size}, "
              f"{args.n_epochs} epochs x 5 tasks, {2 * per_train} training images per task", flush=True)
        results = run_experiment(args, progress=ProgressBar())
    wall = results["wall_time_s"]
    print(f"protocol run: {steps} optimizer steps in {wall:.1f} s wall ({steps / wall:.1f} steps/s overall, "
          f"including data loading and 5 evaluations); Class-IL {results['class_il']:.2f} "
          f"(synthetic data: chance level expected)", flush=True)


def parse_options(argv=None) -> argparse.Namespace:
    """The benchmark's options (also used by ``benchmarks.gpu_check`` to build its measurements)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--dataset", default="all",
                   help=f"one of {', '.join(DATASETS + MLP_DATASETS)}, a comma list, or all (the image benchmarks)")
    p.add_argument("--models", default="er,derpp", help="comma list of methods (default er,derpp)")
    p.add_argument("--heads", default="fc,fno", help="comma list of heads (default fc,fno)")
    p.add_argument("--buffer_size", type=int, default=200, help="200, 500 or 5120 (the table's sizes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--channels_last", type=int, default=0, choices=(0, 1))
    p.add_argument("--compile", default="0", help="0, 1 or a torch.compile mode, e.g. reduce-overhead")
    p.add_argument("--backbone", default=None, help="default: the dataset's (resnet18)")
    p.add_argument("--steps", type=int, default=200, help="timed optimizer steps (default 200)")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps before (default 50)")
    p.add_argument("--eval_images", type=int, default=None, help="test images to evaluate (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0,
                   help="after timing, profile this many more steps and print the top operators")
    p.add_argument("--seeds", default=None, metavar="N,N,...",
                   help="time N seeds trained as one stacked model for each N (e.g. 1,4,16,64), after the single run")
    p.add_argument("--protocol", action="store_true", help="run the full seq-cifar10 ER protocol instead")
    p.add_argument("--protocol_epochs", type=int, default=50, help="epochs per task of --protocol (default 50)")
    p.add_argument("--protocol_train_per_class", type=int, default=5000,
                   help="training images per class of --protocol (default 5000, the real size)")
    p.add_argument("--protocol_test_per_class", type=int, default=1000,
                   help="test images per class of --protocol (default 1000, the real size)")
    opts = p.parse_args(argv)
    opts.dataset = list(DATASETS) if opts.dataset == "all" else opts.dataset.split(",")
    opts.models, opts.heads = opts.models.replace(" ", ",").split(","), opts.heads.replace(" ", ",").split(",")
    for name in opts.dataset:
        if name not in DATASETS + MLP_DATASETS:
            p.error(f"unknown --dataset {name!r}; valid choices: {', '.join(DATASETS + MLP_DATASETS)}, all")
    if opts.seeds is not None:
        try:
            opts.seeds = [int(n) for n in opts.seeds.replace(" ", ",").split(",") if n]
        except ValueError:
            p.error(f"--seeds takes a comma list of seed counts, e.g. 1,4,16,64; got {opts.seeds!r}")
        if not opts.seeds or min(opts.seeds) < 1:
            p.error(f"--seeds takes positive seed counts, e.g. 1,4,16,64; got {opts.seeds}")
    if min(opts.steps, opts.warmup) < 1:
        p.error("--steps and --warmup must be at least 1")
    return opts


def main(argv=None) -> None:
    opts = parse_options(argv)
    if opts.protocol:
        protocol(opts)
    elif opts.seeds:
        table_stacked(opts)
    else:
        table(opts)


if __name__ == "__main__":
    main()
