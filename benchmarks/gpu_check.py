"""One prepared GPU check: the CUDA tests, the throughput table, stacked seeds and the protocol projections, in one report.

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
import os
import subprocess
import sys
import time
import traceback

import torch

from benchmarks.throughput import (DATASETS, MLP_DATASETS, STACKED_COLUMNS, format_row, format_stacked_row, measure,
                                   measure_stacked, parse_options, projection_lines, protocol_steps, synthetic_splits)
from datasets import get_dataset_class
from utils.io import atomic_write_bytes

FLAG_SETS = {  # name -> throughput options; reported separately, the fast set beside the plain one
    "fp32 eager": [],
    "bf16 + channels_last + compile reduce-overhead": ["--amp", "bf16", "--channels_last", "1",
                                                       "--compile", "reduce-overhead"],
}
PAPER_TABLE_RUNS = {"seq-cifar10": 2 * 2 * 3 * 10, "seq-cifar100": 2 * 2 * 3 * 10,  # methods x heads x buffers x seeds
                    "seq-tinyimg": 2 * 2 * 3 * 10}
# Stacked seeds: N seeds as one model (utils.stacked) for each N, ER and DER++ with the FNO head, by
# dataset in this order until their share of the time budget is spent (smoke: N = 1, 2).
STACKED_SEEDS, SMOKE_STACKED_SEEDS = (1, 4, 16, 64), (1, 2)
STACKED_DATASETS, SMOKE_STACKED_DATASETS = ("seq-cifar10", "seq-mnist", "seq-cifar100", "seq-tinyimg"), \
    ("seq-mnist", "seq-cifar10")  # the smoke run checks the MLP and the ResNet code paths, cheaper first
STACKED_SHARE_S = 200.0  # of the budget (at most a third) kept for them: the single-run tables stop before it


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


def stacked_section(opts, rows: dict, device: str, base: list, start: float, budget: float) -> tuple:
    """Single and stacked rows for each dataset and method (FNO, fp32), and the CL table's device-hours at each
    N; returns (report lines, failures).  The single row is the fp32 table's when it has one."""
    seeds = SMOKE_STACKED_SEEDS if opts.smoke else STACKED_SEEDS
    steps = ["--steps", "2", "--warmup", "1"] if opts.smoke else ["--steps", "20", "--warmup", "5"]
    lines, failures = [], 0
    rates = {"single": {}, **{n: {} for n in seeds}}
    for dataset in SMOKE_STACKED_DATASETS if opts.smoke else STACKED_DATASETS:
        # The MLP benchmark keeps its own backbone (the smoke run narrows only the ResNet).
        flags = [f for f in base if f not in ("--backbone", "resnet18-narrow")] if dataset in MLP_DATASETS else base
        splits = synthetic_splits(get_dataset_class(dataset), torch.device(device), 0)
        for model in ("er", "derpp"):
            for n in ("single",) + tuple(seeds):
                label = f"{dataset} {model} fno {n} seeds"
                if time.monotonic() - start > budget:
                    lines.append(f"{label}: skipped (time budget of {budget:.0f} s spent)")
                    continue
                try:
                    if n == "single":
                        row = rows.get(("fp32 eager", dataset, model, "fno")) or \
                            measure_row(flags, dataset, model, "fno", splits)
                        rates["single"][(dataset, model, "fno")] = row["steps_s"]
                    else:
                        opts_n = parse_options(flags + steps + ["--dataset", dataset, "--models", model,
                                                                "--heads", "fno", "--buffer_size", "200"])
                        row = measure_stacked(opts_n, dataset, model, "fno", splits, n)
                        rates[n][(dataset, model, "fno")] = row["run_steps_s"]
                    lines.append(format_stacked_row(row))
                except Exception as exc:  # reported, never fatal (out of memory at large N is a finding)
                    lines.append(f"{label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    traceback.print_exc()
                    failures += 1
        del splits
    title = " | ".join(t for t, _ in STACKED_COLUMNS)
    report = ["## Stacked seeds (main.py --seeds): single and stacked, FNO, fp32", "",
              "run-steps/s: optimizer steps of all the stacked runs per second; img/s: their stream images per "
              "second; ms/step: one stacked step", "", "```", title, *lines, "```", "",
              "The paper's CL table (4 benchmarks x ER, DER++ x FC, FNO x 3 buffers x 10 seeds = 480 runs) at "
              "these rates:", "", *projection_lines(rates, device), ""]
    return report, failures


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
    single_budget = budget - min(STACKED_SHARE_S, budget / 3)
    for flag_name, flags in FLAG_SETS.items():
        if opts.smoke and "--compile" in flags:  # CPU inductor builds take minutes: keep the flags, skip compiling
            flags = flags[:flags.index("--compile")] + ["--compile", "0"]
        report += [f"## Throughput, {flag_name} (single run; stacked seeds: below)", "",
                   "```", " | ".join(t for t in ("dataset", "model", "head", "steps/s", "img/s", "ms/step",
                                                   "eval img/s", "eval s (imgs)", "peak dev MiB (reserved)",
                                                   "peak RSS MiB")), "```", ""]
        lines = []
        for dataset in DATASETS:
            splits = synthetic_splits(get_dataset_class(dataset), torch.device(device), 0)
            for model in ("er", "derpp"):
                for head in ("fc", "fno"):
                    label = f"{dataset} {model} {head}"
                    if time.monotonic() - start > single_budget:
                        lines.append(f"{label}: skipped (time budget of {single_budget:.0f} s spent)")
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

    stacked_report, stacked_failures = stacked_section(opts, rows, device, base, start, budget)
    report += stacked_report
    failures += stacked_failures

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
