"""One prepared GPU check: the CUDA tests, the throughput table and the protocol projections, in one report.

    bash benchmarks/gpu_check.sh OUT_DIR            # on a GPU machine, at most ~8 minutes
    bash benchmarks/gpu_check.sh --smoke OUT_DIR    # the same code path on the CPU, tiny step counts (CI)

Writes ``OUT_DIR/gpu_report.md`` (and prints it).  Every measurement runs on its
own: a failure (an unsupported flag, out of memory, a compile error) is
reported in its row and the check goes on; measurements that would pass the
time budget are listed as skipped.  Needs nothing beyond torch and numpy (no
wandb, no network): run it from the repository root.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import traceback

import torch

from benchmarks.throughput import DATASETS, format_row, measure, parse_options, synthetic_splits
from datasets import get_dataset_class
from utils.io import atomic_write_bytes

FLAG_SETS = {  # name -> throughput options; reported separately, the fast set beside the plain one
    "fp32 eager": [],
    "bf16 + channels_last + compile reduce-overhead": ["--amp", "bf16", "--channels_last", "1",
                                                       "--compile", "reduce-overhead"],
}
PAPER_TABLE_RUNS = {"seq-cifar10": 2 * 2 * 3 * 10, "seq-cifar100": 2 * 2 * 3 * 10,  # methods x heads x buffers x seeds
                    "seq-tinyimg": 2 * 2 * 3 * 10}
PROTOCOL = {"seq-cifar10": (50, 10000, 5), "seq-cifar100": (50, 5000, 10), "seq-tinyimg": (100, 10000, 10)}
# dataset -> (epochs per task, training images per task, tasks) of the paper's protocol, batch 32


def protocol_steps(dataset: str, batch_size: int = 32) -> int:
    epochs, per_task, tasks = PROTOCOL[dataset]
    return tasks * epochs * math.ceil(per_task / batch_size)


def cuda_tests(smoke: bool) -> str:
    """Run tests/test_cuda.py; return pytest's closing line (they skip without CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60 if smoke else 240)
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith("FAILED") or line.startswith("ERROR")]
    return "\n".join(failures + lines[-1:]) + f"\n(exit code {done.returncode})"


def measure_row(options: list, dataset: str, model: str, head: str, splits, buffer_size: int = 200) -> dict:
    opts = parse_options(options + ["--dataset", dataset, "--models", model, "--heads", head,
                                    "--buffer_size", str(buffer_size)])
    return measure(opts, dataset, model, head, splits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--smoke", action="store_true", help="tiny step counts on the CPU: checks the script, not speed")
    p.add_argument("--budget_s", type=float, default=None, help="time budget (default 420 s; smoke: 600 s)")
    opts = p.parse_args(argv)
    start = time.monotonic()
    budget = opts.budget_s or (600.0 if opts.smoke else 420.0)
    device = "cpu" if opts.smoke else "cuda"
    if not opts.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    steps = ["--steps", "2", "--warmup", "1", "--eval_images", "32", "--backbone", "resnet18-narrow"] if opts.smoke \
        else ["--steps", "100", "--warmup", "30", "--eval_images", "2000"]
    base = ["--device", device] + steps
    name = "CPU (smoke run: figures mean nothing)" if opts.smoke else torch.cuda.get_device_name(0)
    report = [f"# GPU check: {name}", "", f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"started {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]

    report += ["## CUDA tests", "", "```", cuda_tests(opts.smoke), "```", ""]

    rows, failures = {}, 0
    for flag_name, flags in FLAG_SETS.items():
        if opts.smoke and "--compile" in flags:  # CPU inductor builds take minutes: keep the flags, skip compiling
            flags = flags[:flags.index("--compile")] + ["--compile", "0"]
        report += [f"## Throughput, {flag_name} (single run; stacked seeds: not implemented yet)", "",
                   "```", " | ".join(t for t in ("dataset", "model", "head", "steps/s", "img/s", "ms/step",
                                                   "eval img/s", "eval s (imgs)", "peak dev MiB (reserved)",
                                                   "peak RSS MiB")), "```", ""]
        lines = []
        for dataset in DATASETS:
            splits = synthetic_splits(get_dataset_class(dataset), torch.device(device), 0)
            for model in ("er", "derpp"):
                for head in ("fc", "fno"):
                    label = f"{dataset} {model} {head}"
                    if time.monotonic() - start > budget:
                        lines.append(f"{label}: skipped (time budget of {budget:.0f} s spent)")
                        continue
                    try:
                        row = measure_row(base + flags, dataset, model, head, splits)
                        rows[(flag_name, dataset, model, head)] = row
                        lines.append(format_row(row))
                    except Exception as exc:  # reported, never fatal
                        lines.append(f"{label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                        traceback.print_exc()
                        failures += 1
            del splits
        report[-2:-2] = lines

    report += ["## Protocol projections (from the measured training rates; evaluation not included)", ""]
    for flag_name in FLAG_SETS:
        total, complete = 0.0, True
        for dataset in DATASETS:
            for model in ("er", "derpp"):
                row = rows.get((flag_name, dataset, model, "fno"))
                if row is None:
                    complete = False
                    continue
                hours = protocol_steps(dataset) / row["steps_s"] / 3600
                total += hours * PAPER_TABLE_RUNS[dataset] / 2
                report.append(f"- {flag_name}, {dataset} {model} FNO: {protocol_steps(dataset):,} steps "
                              f"-> {hours:.2f} h per run x {PAPER_TABLE_RUNS[dataset] // 2} runs")
        report.append(f"- **{flag_name}: the paper's image-benchmark table (360 runs, one at a time): "
                      f"{total:.0f} GPU-hours**" + ("" if complete else " (rows missing: incomplete)"))
    report.append("")

    report += ["## Peak device memory, seq-tinyimg DER++ FNO, buffer 5120", ""]
    if time.monotonic() - start > budget:
        report.append("skipped (time budget spent)")
    else:
        try:
            splits = synthetic_splits(get_dataset_class("seq-tinyimg"), torch.device(device), 0)
            row = measure_row(base, "seq-tinyimg", "derpp", "fno", splits, buffer_size=5120)
            report.append("```\n" + format_row(row) + "\n```")
        except Exception as exc:
            report.append(f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            failures += 1
    report += ["", f"Total time: {time.monotonic() - start:.0f} s", ""]

    text = "\n".join(report)
    os.makedirs(opts.out_dir, exist_ok=True)
    atomic_write_bytes(os.path.join(opts.out_dir, "gpu_report.md"), text.encode())
    print(text)
    # On a GPU a failed row is a finding, reported above; in the smoke run it is a bug in the script.
    return 1 if opts.smoke and failures else 0


if __name__ == "__main__":
    sys.exit(main())
