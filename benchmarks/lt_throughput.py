"""Training throughput of the long-tail arms on synthetic CIFAR-shaped data (no files, no network).

Times the real training step of ``main_lt.py`` - device-resident batch gather,
on-device crop + flip + normalisation, the arm's mixing and loss, the clean
batch-norm pass of the mixing arms, backward and SGD - after a warm-up, for
every arm and every requested speed-flag combination, and prints images/s,
ms/step and peak memory::

    python -m benchmarks.lt_throughput --device cpu --steps 10
    python -m benchmarks.lt_throughput --device cuda --amp none bf16 fp16 --channels_last 0 1

Peak memory is the device's peak allocation on CUDA and the process's peak
resident set size on the CPU (which only grows, so later rows include earlier ones).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time


import torch

from datasets.utils.continual_dataset import Split
from longtail.args import parse_args
from longtail.arms import LT_METHODS, lt_method_names
from longtail.batches import LongTailData, ResidentBatches, ResidentTestBatches
from longtail.data import get_lt_dataset_class, long_tail_counts
from longtail.processes import Processes
from longtail.trainer import build_run, train_step
from utils.cli import Extend, comma_list
from utils.seeding import make_generator


def synthetic_data(dataset: str, ratio: float, batch_size: int, device: torch.device) -> LongTailData:
    """Random uint8 images with the dataset's shape and a long-tailed label profile (ratio ``ratio``)."""
    cls = get_lt_dataset_class(dataset)
    counts = long_tail_counts(max(batch_size * 4 // cls.NUM_CLASSES, 100), cls.NUM_CLASSES, ratio)
    counts = [max(c, 1) for c in counts]
    g = torch.Generator().manual_seed(0)
    y = torch.repeat_interleave(torch.arange(cls.NUM_CLASSES), torch.tensor(counts))
    x = torch.randint(0, 256, (len(y),) + tuple(cls.INPUT_SHAPE), generator=g, dtype=torch.uint8)
    split = Split(x, y).to(device)
    procs = Processes()
    transform = cls.TRANSFORM.to(device)  # as the trainer: constants on the device once
    train = ResidentBatches(split, transform, batch_size, procs, make_generator(0, "data-order", device),
                            make_generator(0, "augmentation", device))
    return LongTailData(train, ResidentTestBatches(split, transform, procs), counts, len(y))


def full_batches(data: LongTailData, batch_size: int):
    """An endless stream of full batches (the short last batch of an epoch is skipped)."""
    epoch = 0
    while True:
        for x, y in data.train.epoch(epoch):
            if len(y) == batch_size:
                yield x, y
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(method: str, amp: str, channels_last: int, opts) -> dict:
    argv = ["--dataset", opts.dataset, "--method", method, "--batch_size", str(opts.batch_size),
            "--device", opts.device, "--amp", amp, "--channels_last", str(channels_last)]
    args = parse_args(argv + (["--width", str(opts.width)] if opts.width else []))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = synthetic_data(opts.dataset, args.imbalance_ratio, args.batch_size, device)
    run = build_run(args, Processes(), device, data)
    run.model.train()
    batches = full_batches(data, args.batch_size)
    for _ in range(opts.warmup):
        train_step(run, *next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(opts.steps):
        loss = train_step(run, *next(batches))
    sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{method}: non-finite loss {float(loss)}")
    return {"method": method, "amp": amp, "channels_last": channels_last,
            "images_s": opts.steps * args.batch_size / elapsed, "ms_step": 1000 * elapsed / opts.steps,
            "peak_mib": peak_memory_mib(device), "width": args.width}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="cifar10-lt", choices=("cifar10-lt", "cifar100-lt"))
    p.add_argument("--methods", nargs="+", default=list(LT_METHODS), type=comma_list(str, lt_method_names()),
                   action=Extend, help="arms, with spaces or commas (default: all)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--width", type=int, default=None, help="resnet32 width (default: the dataset's)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    p.add_argument("--amp", nargs="+", default=["none"], type=comma_list(str, ("none", "bf16", "fp16")), action=Extend,
                   help="autocast precisions to time (fp16: with a GradScaler, CUDA only)")
    p.add_argument("--channels_last", nargs="+", default=[0], type=comma_list(int, (0, 1)), action=Extend)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    opts = p.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{opts.dataset} shape, ResNet-32, batch {opts.batch_size}, {opts.steps} timed steps after "
          f"{opts.warmup}, on {name}, torch {torch.__version__}")
    print(f"{'method':<12} {'amp':<5} {'ch_last':>7} {'width':>5} {'images/s':>10} {'ms/step':>9} {'peak MiB':>9}")
    for method in opts.methods:
        for amp in opts.amp:
            for cl in opts.channels_last:
                r = measure(method, amp, cl, opts)
                print(f"{r['method']:<12} {r['amp']:<5} {r['channels_last']:>7} {r['width']:>5} "
                      f"{r['images_s']:>10.1f} {r['ms_step']:>9.1f} {r['peak_mib']:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
