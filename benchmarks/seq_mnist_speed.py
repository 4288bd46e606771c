"""Time full seq-mnist runs of each method (buffer 200, best args: 6,000 optimizer steps at batch 10 for ER).

    python -m benchmarks.seq_mnist_speed [--data_path DIR] [--device cpu] [--models er,derpp] [--classifier fno]

``--models`` takes a comma- or space-separated list (default: every registered
method with seq-mnist best arguments at ``--buffer_size``; buffer-less methods
run without a buffer).  Each run's line gives its wall time and its ratio to ER's.

``--seeds 1-10`` times stacked runs instead (``main.py --seeds``, docs/stacked.md):
for each method, one seed alone and the seeds as one stacked process,
alternately ``--repeat`` times, and prints each one's median wall time, peak
RSS and the stacked/one-seed ratio::

    python -m benchmarks.seq_mnist_speed --models er --seeds 1-10 --repeat 3

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
from utils.stacked import parse_seeds

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


def run_one(model: str, buffer_size: int, opts, data_path: str, tmp: str, seeds: list = ()) -> dict:
    """``main.py`` in a subprocess: (results, wall seconds, the child's own peak RSS in MiB).

    ``seeds``: the stacked run ``--seeds`` of these seeds instead of one seed (the results are the first
    seed's)."""
    out = os.path.join(tmp, f"{model}-s{{seed}}.json" if seeds else f"{model}.json")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--dataset", "seq-mnist", "--model", model,
           "--buffer_size", str(buffer_size), "--load_best_args", "--classifier", opts.classifier,
           "--masked_softmax", str(opts.masked_softmax), "--data_path", data_path, "--device", opts.device,
           "--results_file", out]
    if seeds:
        cmd += ["--seeds", ",".join(map(str, seeds))]
        out = out.replace("{seed}", str(seeds[0]))
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the maximum over all children
    wall = time.perf_counter() - start
    error = child.stderr.read().decode(errors="replace").strip().splitlines()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"model": model, "error": error[-1] if error else f"exit status {status}"}
    with open(out) as f:
        res = json.load(f)
    return {"model": model, "wall": wall, "peak_mib": usage.ru_maxrss / 1024, "res": res}


def compare_stacked(model: str, opts, data_path: str, tmp: str) -> None:
    """One seed against ``opts.seeds`` stacked, each timed ``opts.repeat`` times, alternating."""
    from models import get_model_class
    buffer_size = opts.buffer_size if get_model_class(model).USES_BUFFER else 0
    timed = {"one": [], "stacked": []}
    for _ in range(opts.repeat):
        for kind, seeds in (("one", ()), ("stacked", opts.seeds)):
            row = run_one(model, buffer_size, opts, data_path, tmp, seeds)
            if "error" in row:
                print(f"{model} ({kind}) failed: {row['error']}", flush=True)
                return
            timed[kind].append(row)
    medians = {}
    for kind, rows in timed.items():
        walls = sorted(r["wall"] for r in rows)
        medians[kind] = walls[len(walls) // 2]
        label = "1 seed" if kind == "one" else f"{len(opts.seeds)} seeds stacked"
        print(f"{model:8s} {label:18s} {medians[kind]:7.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)})  "
              f"peak RSS {max(r['peak_mib'] for r in rows):5.0f} MiB  Class-IL {rows[0]['res']['class_il']:6.2f}",
              flush=True)
    print(f"{model:8s} {len(opts.seeds)} seeds stacked / 1 seed: {medians['stacked'] / medians['one']:.2f}x wall time "
          f"({len(opts.seeds) * medians['one'] / medians['stacked']:.1f}x the runs per second)", flush=True)


def default_models(buffer_size: int) -> list:
    from models import get_model_class, model_names
    chosen = []
    for name in model_names():
        table = get_model_class(name).BEST_ARGS.get("seq-mnist", {})
        if buffer_size in table or 0 in table:
            chosen.append(name)
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=None, help="methods, comma- or space-separated (default: all)")
    p.add_argument("--classifier", default="fno")
    p.add_argument("--masked_softmax", type=int, default=1, choices=(0, 1))
    p.add_argument("--buffer_size", type=int, default=200)
    p.add_argument("--seeds", type=parse_seeds, help="time one seed against these seeds stacked, e.g. 1-10")
    p.add_argument("--repeat", type=int, default=1, help="with --seeds: timings of each, alternating (median)")
    opts = p.parse_args()
    models = ([m for part in opts.models for m in part.split(",") if m] if opts.models
              else default_models(opts.buffer_size))
    from models import model_names
    unlisted = [m for m in model_names() if m not in models]
    if unlisted and not opts.models:
        print(f"not timed (no seq-mnist best arguments at buffer {opts.buffer_size}; time them with --models and "
              f"explicit flags): {', '.join(unlisted)}")
    raw = os.path.join(opts.data_path, "MNIST", "raw")
    real = all(find_file(raw, s) for pair in MNIST_FILES.values() for s in pair)
    from models import get_model_class
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.abspath(opts.data_path) if real else tmp
        if not real:
            write_synthetic_mnist(tmp)
        print(f"data: {'real MNIST' if real else 'synthetic MNIST-shaped'}; {opts.classifier}, "
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
