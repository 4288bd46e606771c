"""Time full seq-mnist runs of each method (buffer 200, best args: 6,000 optimizer steps at batch 10 for ER).

    python -m benchmarks.seq_mnist_speed [--data_path DIR] [--device cpu] [--models er,derpp] [--classifier fno]

``--models`` takes a comma- or space-separated list (default: every registered
method with seq-mnist best arguments at ``--buffer_size``; buffer-less methods
run without a buffer).  Each run's line gives its wall time and its ratio to ER's.

``--seeds 1-10`` times stacked runs instead (``main.py --seeds``, docs/stacked.md):
for each method, one seed alone, the seeds as one stacked process and, with
``--processes P``, the seeds split over P stacked processes at once (what the
grid runner's ``--pack_seeds K --jobs P`` runs), alternately ``--repeat``
times; prints each one's median wall time, peak RSS and ratio to one seed::

    python -m benchmarks.seq_mnist_speed --models er --seeds 1-10 --processes 2 --repeat 3

Uses the MNIST files under ``--data_path`` (``MNIST/raw/``) when they are
there, otherwise synthetic data of MNIST's exact shape (60,000 + 10,000
28x28 uint8 images, written as IDX files to a temporary folder).  The run is
``main.py`` in a subprocess, so the wall time includes start-up (imports,
data loading) and evaluation; peak memory is the child's maximum RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from datasets.utils.idx import MNIST_FILES, find_file, write_idx
from models import get_model_class, model_names
from utils.cli import positive
from utils.seeds import parse_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_synthetic_mnist(root: str, seed: int = 0) -> None:
    """Random digits-shaped data with learnable structure: each class is a noisy class template."""
    rng = np.random.RandomState(seed)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    templates = rng.randint(0, 256, size=(10, 28, 28)).astype(np.int16)
    for split, n in (("train", 60000), ("test", 10000)):
        labels = rng.randint(0, 10, size=n).astype(np.uint8)
        images = np.empty((n, 28, 28), dtype=np.uint8)
        for start in range(0, n, 5000):
            chunk = slice(start, start + 5000)
            noise = rng.randint(-120, 121, size=images[chunk].shape).astype(np.int16)
            images[chunk] = np.clip(templates[labels[chunk]] + noise, 0, 255)
        write_idx(os.path.join(raw, MNIST_FILES[split][0]), images)
        write_idx(os.path.join(raw, MNIST_FILES[split][1]), labels)


def run_one(model: str, buffer_size: int, opts, data_path: str, tmp: str, groups: list = ()) -> dict:
    """``main.py`` in a subprocess: (results, wall seconds, the child's own peak RSS in MiB).

    ``groups``: lists of seeds, each run as one stacked process (``--seeds``), all at once; the wall
    time is until the last one ends, the peak RSS the largest child's, the results the first seed's."""
    base = [sys.executable, os.path.join(ROOT, "main.py"), "--dataset", "seq-mnist", "--model", model,
            "--buffer_size", str(buffer_size), "--load_best_args", "--classifier", opts.classifier,
            "--masked_softmax", str(opts.masked_softmax), "--data_path", data_path, "--device", opts.device]
    if model in ("icarl", "lwf_mc"):  # sigmoid methods refuse a head with logits >= 0 (FNO) without an offset
        base += ["--bce_offset", "5"]
    if not groups:
        commands, out = [base + ["--results_file", os.path.join(tmp, f"{model}.json")]], f"{model}.json"
    else:
        threads = ["--num_threads", str(opts.stacked_threads)] if opts.stacked_threads else []
        commands = [base + ["--results_file", os.path.join(tmp, f"{model}-s{{seed}}.json"),
                            "--seeds", ",".join(map(str, seeds))] + threads for seeds in groups]
        out = f"{model}-s{groups[0][0]}.json"
    start = time.perf_counter()
    children = []
    for i, cmd in enumerate(commands):
        err = open(os.path.join(tmp, f"stderr-{i}.txt"), "w+", encoding="utf-8")
        children.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp), err))
    peak, failure = 0.0, None
    for child, err in children:
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the maximum over all children
        peak = max(peak, usage.ru_maxrss / 1024)
        err.seek(0)
        lines = err.read().strip().splitlines()
        err.close()
        if os.waitstatus_to_exitcode(status) != 0 and failure is None:
            failure = lines[-1] if lines else f"exit status {status}"
    wall = time.perf_counter() - start
    if failure is not None:
        return {"model": model, "error": failure}
    with open(os.path.join(tmp, out), encoding="utf-8") as f:
        res = json.load(f)
    return {"model": model, "wall": wall, "peak_mib": peak, "res": res}


def compare_stacked(model: str, opts, data_path: str, tmp: str) -> None:
    """One seed against ``opts.seeds`` stacked in one process and, with ``opts.processes``, split over that
    many stacked processes at once (what ``utils.grid --pack_seeds K --jobs P`` runs); each timed
    ``opts.repeat`` times, alternating."""
    buffer_size = opts.buffer_size if get_model_class(model).USES_BUFFER else 0
    seeds, per = opts.seeds, -(-len(opts.seeds) // opts.processes)
    kinds = {"1 seed": [], f"{len(seeds)} seeds stacked": [seeds]}
    if opts.processes > 1:
        kinds[f"{opts.processes} processes of {per}"] = [seeds[i:i + per] for i in range(0, len(seeds), per)]
    timed = {kind: [] for kind in kinds}
    for _ in range(opts.repeat):
        for kind, groups in kinds.items():
            row = run_one(model, buffer_size, opts, data_path, tmp, groups)
            if "error" in row:
                print(f"{model} ({kind}) failed: {row['error']}", flush=True)
                return
            timed[kind].append(row)
    threads = f", --num_threads {opts.stacked_threads}" if opts.stacked_threads else ""
    print(f"{model}: median wall time of {opts.repeat} alternating runs each (stacked runs{threads or ' with the dataset default threads'})")
    one = None
    for kind, rows in timed.items():
        walls = sorted(r["wall"] for r in rows)
        median = walls[len(walls) // 2]
        one = one or median
        ratio = "" if kind == "1 seed" else f"  {median / one:.2f}x one seed's time, {len(seeds) * one / median:.1f}x its runs/s"
        print(f"  {kind:24s} {median:7.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)})  "
              f"peak RSS {max(r['peak_mib'] for r in rows):5.0f} MiB{ratio}", flush=True)


def default_models(buffer_size: int) -> list:
    chosen = []
    for name in model_names():
        table = get_model_class(name).BEST_ARGS.get("seq-mnist", {})
        if buffer_size in table or 0 in table:
            chosen.append(name)
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--data_path", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=None, help="methods, comma- or space-separated (default: all)")
    p.add_argument("--classifier", default="fno")
    p.add_argument("--masked_softmax", type=int, default=1, choices=(0, 1))
    p.add_argument("--buffer_size", type=int, default=200)
    p.add_argument("--seeds", type=parse_seeds, help="time one seed against these seeds stacked, e.g. 1-10")
    p.add_argument("--stacked_threads", type=positive(int), help="with --seeds: the stacked run's --num_threads (default: "
                                                          "the dataset's, one; the single seed keeps its default)")
    p.add_argument("--processes", type=positive(int), default=1, help="with --seeds: also time the seeds split over this many "
                                                                "stacked processes at once (e.g. 2 on 2 cores)")
    p.add_argument("--repeat", type=positive(int), default=1, help="with --seeds: timings of each, alternating (median)")
    opts = p.parse_args()
    models = ([m for part in opts.models for m in part.split(",") if m] if opts.models
              else default_models(opts.buffer_size))
    unlisted = [m for m in model_names() if m not in models]
    if unlisted and not opts.models:
        print(f"not timed (no seq-mnist best arguments at buffer {opts.buffer_size}; time them with --models and "
              f"explicit flags): {', '.join(unlisted)}")
    raw = os.path.join(opts.data_path, "MNIST", "raw")
    real = all(find_file(raw, s) for pair in MNIST_FILES.values() for s in pair)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.abspath(opts.data_path) if real else tmp
        if not real:
            write_synthetic_mnist(tmp)
        print(f"data: {'MNIST files in ' + raw if real else 'synthetic MNIST-shaped'}; {opts.classifier}, "
              f"masked={opts.masked_softmax}, buffer {opts.buffer_size}, device {opts.device}", flush=True)
        if opts.seeds:
            for model in models:
                compare_stacked(model, opts, data_path, tmp)
            return
        for model in models:
            buffer_size = opts.buffer_size if get_model_class(model).USES_BUFFER else 0
            row = run_one(model, buffer_size, opts, data_path, tmp)
            if "error" in row and "--masked_softmax 0" in row["error"] and opts.masked_softmax:
                # a method with no softmax to mask (icarl, lwf_mc, gdumb) runs unmasked, and says so
                row = run_one(model, buffer_size, argparse.Namespace(**{**vars(opts), "masked_softmax": 0}),
                              data_path, tmp)
                row["model"] = model + " (unmasked)"
            rows.append(row)
            if "error" in row:
                print(f"{row['model']:10s} failed: {row['error']}", flush=True)
                continue
            res = row["res"]
            print(f"{row['model']:10s} {row['wall']:7.2f} s/run  {res['n_steps'] / res['train_time_s']:6.0f} steps/s  "
                  f"peak RSS {row['peak_mib']:5.0f} MiB  Class-IL {res['class_il']:6.2f}  "
                  f"Task-IL {res['task_il']:6.2f}", flush=True)
    er = next((r["wall"] for r in rows if r["model"] == "er" and "wall" in r), None)
    if er:
        print("wall time / ER's: " + "  ".join(f"{r['model']} {r['wall'] / er:.2f}x" for r in rows if "wall" in r))


if __name__ == "__main__":
    main()
