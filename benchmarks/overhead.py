"""Framework overhead: the trainer's step against a bare PyTorch loop of the same shapes, in one process.

    python -m benchmarks.overhead                         # seq-mnist's MLP on the CPU (and seq-cifar10's
                                                          # ResNet-18 too when CUDA is there)
    python -m benchmarks.overhead --datasets seq-mnist --models er --steps 2000 --repeat 5 --seeds 10

The bare loop is the floor eager PyTorch allows for the same step: the same network (built by
``backbone.heads.build_network``: masked FNO head), the same data on the device as uint8, the same
batch and replay sizes and learning rate (the method's best arguments at buffer 200), the same
augmentation (the dataset's ``DeviceTransform``), plain SGD written as one ``add_`` per parameter, one
forward over stream + replay without batch norm (one per term with it) and one backward, a reservoir
buffer of preallocated tensors with a sink row; no callbacks, no checks, no bookkeeping.  It is not a
second implementation of the methods: only a timing reference.

Each figure is the median of ``--repeat`` alternating timings (bare, trainer, stacked, bare, ...), so a
busy machine slows all of them alike.  Ratios above 1 are the framework's cost per step; the stacked
row's per-run figure is its step time divided by its seeds (below 1: stacking pays).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from backbone.heads import build_network
from benchmarks.throughput import run_args, sync, synthetic_dataset, synthetic_splits
from datasets import get_dataset_class
from utils.losses import mask_other_tasks
from utils.seeds import seed_args
from utils.stacked.trainer import train_stacked_stage
from utils.training import build_run, stages, task_data, train_stage

BUFFER = 200


def bare_loop(args, dataset_cls, splits, device: torch.device, steps: int) -> float:
    """Seconds for ``steps`` steps of the bare loop on task 2 after the buffer holds task 1's samples."""
    torch.manual_seed(0)
    net = build_network(args, dataset_cls.INPUT_SHAPE, dataset_cls.N_TASKS * dataset_cls.N_CLASSES_PER_TASK)
    net = net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    transform = dataset_cls.TRANSFORM.to(device)
    task_of_class = torch.arange(dataset_cls.N_TASKS, device=device).repeat_interleave(dataset_cls.N_CLASSES_PER_TASK)
    train = splits[0]
    gen = torch.Generator(device=device).manual_seed(0)
    n_classes = len(task_of_class)
    buf_x = torch.zeros((BUFFER + 1,) + tuple(train.x.shape[1:]), dtype=torch.uint8, device=device)
    buf_y = torch.zeros(BUFFER + 1, dtype=torch.long, device=device)
    buf_logits = torch.zeros(BUFFER + 1, n_classes, device=device)
    buf_x[:BUFFER] = train.x[:BUFFER]  # a full buffer, as after task 1
    buf_y[:BUFFER] = train.y[:BUFFER]
    seen = BUFFER
    bs, mb, lr = args.batch_size, args.minibatch_size, args.lr
    derpp = args.model == "derpp"
    order = torch.randperm(len(train.y), device=device, generator=gen)
    order = order.repeat(math.ceil(steps * bs / len(order)))[:steps * bs].view(steps, bs)

    def forward_terms(terms):
        if batch_norm:
            return sum(loss_of(net(x)) for x, loss_of in terms)
        outs = net(torch.cat([x for x, _ in terms])).split([len(x) for x, _ in terms])
        return sum(loss_of(out) for out, (_, loss_of) in zip(outs, terms))

    sync(device)
    start = time.perf_counter()
    for idx in order:
        raw, y = train.x[idx], train.y[idx]
        x = transform.train(raw, gen)
        j = torch.randperm(BUFFER, device=device, generator=gen)[:mb]
        terms = [(x, lambda out: F.cross_entropy(mask_other_tasks(out, y, task_of_class), y))]
        if derpp:
            j2 = torch.randperm(BUFFER, device=device, generator=gen)[:mb]
            target = buf_logits[j]
            terms += [(transform.train(buf_x[j], gen), lambda out: args.alpha * F.mse_loss(out, target)),
                      (transform.train(buf_x[j2], gen), lambda out: args.beta * F.cross_entropy(out, buf_y[j2]))]
        else:
            by = buf_y[j]
            terms.append((transform.train(buf_x[j], gen), lambda out: F.cross_entropy(out, by)))
        for p in params:
            p.grad = None
        forward_terms(terms).backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr)
            n = seen + torch.arange(bs, device=device)
            slot = torch.randint(0, 2 ** 62, (bs,), device=device, generator=gen) % (n + 1)
            slot = torch.where(slot < BUFFER, slot, BUFFER)  # the sink row takes what is not stored
            buf_x[slot], buf_y[slot] = raw, y
            if derpp:
                buf_logits[slot] = net(x).float()  # the masked DER++'s post-step logits
        seen += bs
    sync(device)
    return time.perf_counter() - start


def trainer_steps(args, dataset_cls, splits, steps: int, n_seeds: int = 0) -> float:
    """Seconds for ``steps`` trainer steps on task 2 (one run, or ``n_seeds`` stacked), after a task-1 warm-up."""
    dataset = synthetic_dataset(dataset_cls, splits)
    runs = [build_run(seed_args(args, seed), dataset) for seed in range(max(1, n_seeds))]
    device = torch.device(args.device)

    def first(run, task, n_steps):
        idx = stages(run)[task].indices
        return task_data(run, task, idx.repeat(math.ceil(n_steps * args.batch_size / len(idx)))
                         [:n_steps * args.batch_size])

    warm = math.ceil(BUFFER / args.batch_size) + 2  # the buffer full, as the bare loop's
    if n_seeds:
        train_stacked_stage(runs, [first(run, 0, warm) for run in runs])
        data = [first(run, 1, steps) for run in runs]
        sync(device)
        start = time.perf_counter()
        train_stacked_stage(runs, data)
    else:
        train_stage(runs[0], first(runs[0], 0, warm))
        data = first(runs[0], 1, steps)
        sync(device)
        start = time.perf_counter()
        train_stage(runs[0], data)
    sync(device)
    return time.perf_counter() - start


def measure(dataset: str, model: str, device: str, steps: int, repeat: int, seeds: int) -> dict:
    dataset_cls = get_dataset_class(dataset)
    opts = argparse.Namespace(buffer_size=BUFFER, device=device, amp="none", channels_last=0, compile="0", seed=0,
                              backbone=None)
    args = run_args(opts, dataset, model, "fno", ["--nowand", "1", "--results_file", "none"])
    splits = synthetic_splits(dataset_cls, torch.device(device), 0)
    times = {"bare": [], "trainer": [], "stacked": []}
    for _ in range(repeat):
        times["bare"].append(bare_loop(args, dataset_cls, splits, torch.device(device), steps))
        times["trainer"].append(trainer_steps(args, dataset_cls, splits, steps))
        if seeds:
            times["stacked"].append(trainer_steps(args, dataset_cls, splits, steps, seeds))
    ms = {k: 1000 * statistics.median(v) / steps for k, v in times.items() if v}
    return {"dataset": dataset, "model": model, "device": device, "seeds": seeds, **ms}


def format_row(row: dict) -> str:
    text = (f"{row['dataset']} {row['model']} ({row['device']}): bare loop {row['bare']:.3f} ms/step | trainer "
            f"{row['trainer']:.3f} ms/step ({row['trainer'] / row['bare']:.2f}x bare)")
    if "stacked" in row:
        per_run = row["stacked"] / row["seeds"]
        text += (f" | stacked {row['seeds']} seeds {row['stacked']:.3f} ms/step = {per_run:.3f} ms per run-step "
                 f"({per_run / row['bare']:.2f}x bare, {row['stacked'] / row['trainer']:.2f}x one seed's step)")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("--datasets", default=None, help="comma-separated (default: seq-mnist on the CPU, plus "
                                                    "seq-cifar10 on CUDA)")
    p.add_argument("--models", default="er,derpp")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 1000 for the MLP, 200 for ResNets)")
    p.add_argument("--repeat", type=int, default=3, help="alternating repetitions; the median is reported")
    p.add_argument("--seeds", type=int, default=10, help="stacked seeds in the stacked row (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    opts = p.parse_args(argv)
    for name in ("steps", "repeat", "threads"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1, got {value}")
    if opts.seeds < 0:
        p.error(f"--seeds must be 0 or more, got {opts.seeds}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    datasets = opts.datasets.split(",") if opts.datasets else (["seq-mnist"] + (["seq-cifar10"] if device == "cuda"
                                                                                else []))
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else f", {torch.get_num_threads()} threads"),
          flush=True)
    for dataset in datasets:
        steps = opts.steps or (1000 if dataset in ("seq-mnist", "perm-mnist", "rot-mnist") else 200)
        for model in opts.models.split(","):
            print(format_row(measure(dataset, model, device, steps, opts.repeat, opts.seeds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
