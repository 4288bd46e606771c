"""Time a full seq-mnist ER run (buffer 200, best args: 6,000 optimizer steps at batch 10).

    python benchmarks/seq_mnist_speed.py [--data_path DIR] [--device cpu] [--model er] [--classifier fno]

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
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Only numpy here: the parent stays small, so the child's peak RSS (which counts the pages it
# shares with the parent between fork and exec) measures main.py alone.
from datasets.utils.idx import MNIST_FILES, find_file, write_idx  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="er", choices=("er", "derpp"))
    p.add_argument("--classifier", default="fno", choices=("fc", "fno"))
    p.add_argument("--buffer_size", type=int, default=200)
    args = p.parse_args()
    raw = os.path.join(args.data_path, "MNIST", "raw")
    real = all(find_file(raw, s) for pair in MNIST_FILES.values() for s in pair)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = args.data_path if real else tmp
        if not real:
            write_synthetic_mnist(tmp)
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--dataset", "seq-mnist", "--model", args.model,
               "--buffer_size", str(args.buffer_size), "--load_best_args", "--classifier", args.classifier,
               "--masked_softmax", "1", "--data_path", data_path, "--device", args.device, "--results_file", out]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with open(out) as f:
            res = json.load(f)
    steps = res["n_steps"]
    print(f"data: {'real MNIST' if real else 'synthetic MNIST-shaped'}; {args.model} {args.classifier} masked, "
          f"buffer {args.buffer_size}, device {res['device']}")
    print(f"optimizer steps: {steps}  training: {res['train_time_s']:.2f} s ({steps / res['train_time_s']:.0f} steps/s)"
          f"  wall time (start-up and evaluation included): {wall:.2f} s  peak RSS: {peak_mib:.0f} MiB")
    print(f"Class-IL {res['class_il']:.2f}  Task-IL {res['task_il']:.2f}")


if __name__ == "__main__":
    main()
