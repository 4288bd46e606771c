"""One prepared GPU check that always leaves a report: sections in their own processes and time boxes.

    bash benchmarks/gpu_check.sh OUT_DIR            # on a GPU machine: under 7 minutes in all
    bash benchmarks/gpu_check.sh --smoke OUT_DIR    # the same code path on the CPU, tiny step counts (CI)

The driver runs the sections below in order, each as ``python -m benchmarks.gpu_check --section NAME``
in a process group of its own, and kills a section that overruns its time box (the box shrinks to what is
left of the total when the total is nearly spent).  A section writes its rows to
``OUT_DIR/sections/NAME.md`` as each one finishes; as soon as the section ends, or is killed, the driver
appends what it wrote, with how it ended, to ``OUT_DIR/gpu_report.md`` (rewritten atomically), so a
check cut short at any moment leaves every finished section, and the finished rows of the one that was
running, in the report.  A row that fails (an unsupported flag, out of memory, a compile error) says so
in its line and the section goes on.  seq-CIFAR-10 comes first: the single-run rows (fp32 and bf16, each
with and without ``--channels_last``; ``--compile`` rows last, as they build for a minute each), the bare
PyTorch loop of the same step (``benchmarks.overhead``), the authors' published rate as a fixed
reference line, and stacked seeds (N = 1, 4, 16, 64; fp32 and bf16).  Needs torch and numpy only (no
wandb, no network): run it from the repository root.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from benchmarks.overhead import bare_loop
from benchmarks.throughput import (DATASETS, format_row, format_stacked_row, measure, measure_stacked, parse_options,
                                   projection_lines, protocol_steps, run_args, synthetic_splits)
from datasets import get_dataset_class
from utils.io import atomic_write_bytes

TOTAL_S, SMOKE_TOTAL_S = 405.0, 600.0  # leaves a 10-minute call its margin; the CPU smoke run is slower
# The authors' code, as reported: seq-cifar10, masked FNO ER, buffer 200, on an H200 (a fixed reference line).
AUTHORS_STEPS_S = 25.0
PAPER_TABLE_RUNS = {"seq-cifar10": 2 * 2 * 3 * 10, "seq-cifar100": 2 * 2 * 3 * 10,  # methods x heads x buffers x seeds
                    "seq-tinyimg": 2 * 2 * 3 * 10}
PRECISION = {"fp32": [], "bf16": ["--amp", "bf16"]}
# The rows of the seq-cifar10 section: single runs (model, precision, channels_last), stacked seeds (precision,
# model, N) and compiled runs; the smoke run checks each code path once (on 2 CPU cores a ResNet step takes
# seconds), a GPU measures the whole grid.
SINGLE_ROWS = [(m, p, c) for m in ("er", "derpp") for p in PRECISION for c in ("0", "1")]
SMOKE_SINGLE_ROWS = [("er", "fp32", "0"), ("derpp", "bf16", "1")]
STACKED_ROWS = [(p, m, n) for p in PRECISION for m in ("er", "derpp") for n in (1, 4, 16, 64)]
SMOKE_STACKED_ROWS = [("fp32", "er", 2), ("bf16", "derpp", 1)]
COMPILE_ROWS = [(m, p, c) for m in ("er", "derpp") for p in ("bf16", "fp32") for c in ("1", "0")]
SMOKE_COMPILE_ROWS = [("er", "bf16", "1")]
# The other benchmarks: (dataset, model, precision, seeds or None for a single run).
OTHER_ROWS = [(d, m, p, None) for d in ("seq-cifar100", "seq-tinyimg", "seq-mnist") for m in ("er", "derpp")
              for p in PRECISION] + [(d, m, "bf16", n) for d in ("seq-cifar100", "seq-tinyimg", "seq-mnist")
                                     for m in ("er", "derpp") for n in (16, 64)]
SMOKE_OTHER_ROWS = [("seq-mnist", "er", "fp32", None), ("seq-mnist", "derpp", "bf16", 2)]


@dataclass
class Section:
    name: str
    title: str
    box_s: float        # its time box on a GPU
    smoke_box_s: float  # and in the CPU smoke run
    run: Callable


class Context:
    """What a section works with: the options, its own output file (rows appended as they finish) and the
    rates file every section shares (one JSON line per measured rate, read by the projections)."""

    def __init__(self, opts):
        self.smoke, self.out_dir = opts.smoke, opts.out_dir
        self.device = "cpu" if opts.smoke else "cuda"
        self.steps = ["--steps", "2", "--warmup", "1", "--eval_images", "32", "--backbone", "resnet18-narrow"] \
            if opts.smoke else ["--steps", "100", "--warmup", "30", "--eval_images", "2000"]
        self.stacked_steps = ["--steps", "2", "--warmup", "1"] if opts.smoke else ["--steps", "20", "--warmup", "5"]
        self.failures = 0
        self.path = section_path(opts.out_dir, opts.section)
        if opts.smoke:
            torch.set_num_threads(1)  # tiny steps: one thread is faster, and far faster on a busy machine

    def rows(self, full: list, smoke: list) -> list:
        return smoke if self.smoke else full

    def emit(self, line: str = "") -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(line, flush=True)

    def record(self, **rate) -> None:
        with open(os.path.join(self.out_dir, "sections", "rates.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(rate) + "\n")

    def row(self, label: str, measure_it: Callable[[], str]) -> None:
        """One measurement: its line, or FAILED with the reason; never fatal."""
        try:
            self.emit(measure_it())
        except Exception as exc:
            self.emit(f"{label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc()
            self.failures += 1

    def flags(self, dataset: str) -> list:
        """The device and step flags; the MLP benchmark keeps its own backbone (the smoke run narrows the ResNet)."""
        steps = [f for f in self.steps if f not in ("--backbone", "resnet18-narrow")] if dataset == "seq-mnist" \
            else self.steps
        return ["--device", self.device] + steps


def section_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, "sections", f"{name}.md")


def single_row(ctx: Context, dataset: str, model: str, head: str, splits, flags: list, tag: str,
               buffer_size: int = 200) -> str:
    opts = parse_options(ctx.flags(dataset) + flags + ["--dataset", dataset, "--models", model, "--heads", head,
                                                        "--buffer_size", str(buffer_size)])
    row = measure(opts, dataset, model, head, splits)
    ctx.record(dataset=dataset, model=model, head=head, seeds="single", tag=tag, steps_s=row["steps_s"])
    return f"{tag:<34} " + format_row(row)


def stacked_row(ctx: Context, dataset: str, model: str, splits, n: int, flags: list, tag: str) -> str:
    opts = parse_options(ctx.flags(dataset) + ctx.stacked_steps + flags + ["--dataset", dataset, "--models", model,
                                                                             "--heads", "fno", "--buffer_size", "200"])
    row = measure_stacked(opts, dataset, model, "fno", splits, n)
    ctx.record(dataset=dataset, model=model, head="fno", seeds=n, tag=tag, steps_s=row["run_steps_s"])
    return f"{tag:<34} " + format_stacked_row(row)


# ----------------------------------------------------------------------------- the sections

def environment(ctx: Context) -> None:
    ctx.emit(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
             f"Python {sys.version.split()[0]}")
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        ctx.emit(f"- {props.name}: {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
                 f"capability {props.major}.{props.minor}; bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        ctx.emit(f"- CPU smoke run ({os.cpu_count()} cores, {torch.get_num_threads()} threads): figures mean nothing")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    ctx.emit(f"- commit {commit.stdout.strip() or 'unknown'}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")


def cifar10(ctx: Context) -> None:
    """seq-cifar10 first: the single-run flag grid, the bare loop, the authors' rate, stacked seeds, compile."""
    dataset = "seq-cifar10"
    splits = synthetic_splits(get_dataset_class(dataset), torch.device(ctx.device), 0)
    ctx.emit("Single runs, FNO head, buffer 200 (steps/s: optimizer steps of one run per second):")
    ctx.emit("```")
    for model, precision, channels_last in ctx.rows(SINGLE_ROWS, SMOKE_SINGLE_ROWS):
        tag = f"{model} {precision}" + (" channels_last" if channels_last == "1" else "")
        ctx.row(tag, lambda: single_row(ctx, dataset, model, "fno", splits,
                                        PRECISION[precision] + ["--channels_last", channels_last], tag))
    ctx.emit("```")
    ctx.emit("")
    ctx.emit("Framework overhead: the same step as a bare PyTorch loop (benchmarks/overhead.py), and the authors' "
             "code as a fixed reference:")
    ctx.emit("```")
    steps = 2 if ctx.smoke else 100
    for model in ("er", "derpp"):
        def bare():
            opts = argparse.Namespace(buffer_size=200, device=ctx.device, amp="none", channels_last=0, compile="0",
                                      seed=0, backbone="resnet18-narrow" if ctx.smoke else None)
            args = run_args(opts, dataset, model, "fno", ["--nowand", "1", "--results_file", "none"])
            bare_loop(args, get_dataset_class(dataset), splits, torch.device(ctx.device), max(1, steps // 4))
            seconds = bare_loop(args, get_dataset_class(dataset), splits, torch.device(ctx.device), steps)
            ctx.record(dataset=dataset, model=model, head="fno", seeds="bare", tag="bare fp32", steps_s=steps / seconds)
            return f"{'bare loop ' + model + ' fp32':<34} {steps / seconds:8.1f} steps/s ({1000 * seconds / steps:.2f} ms/step)"
        ctx.row(f"bare loop {model}", bare)
    ctx.emit(f"{'authors code er (H200, reported)':<34} {AUTHORS_STEPS_S:8.1f} steps/s (fixed reference, not measured)")
    ctx.emit("```")
    ctx.emit("")
    ctx.emit("Stacked seeds (main.py --seeds), FNO (run-steps/s: optimizer steps of all the stacked runs per second):")
    ctx.emit("```")
    for precision, model, n in ctx.rows(STACKED_ROWS, SMOKE_STACKED_ROWS):
        tag = f"{model} {precision} {n} seeds"
        ctx.row(tag, lambda: stacked_row(ctx, dataset, model, splits, n, PRECISION[precision], tag))
    ctx.emit("```")
    ctx.emit("")
    ctx.emit("torch.compile (built cold: about a minute each on a GPU; the smoke run checks the flags without "
             "compiling):")
    ctx.emit("```")
    for model, precision, channels_last in ctx.rows(COMPILE_ROWS, SMOKE_COMPILE_ROWS):
        mode = "0" if ctx.smoke else "reduce-overhead"
        tag = f"{model} {precision} compile" + (" channels_last" if channels_last == "1" else "")
        ctx.row(tag, lambda: single_row(ctx, dataset, model, "fno", splits, PRECISION[precision] + [
            "--channels_last", channels_last, "--compile", mode], tag))
    ctx.emit("```")


def cuda_tests(ctx: Context) -> None:
    """tests/test_cuda.py (they skip without CUDA); pytest's own time limit is the section's box."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    ctx.emit("```")
    for line in failures + lines[-1:]:
        ctx.emit(line)
    ctx.emit(f"(exit code {done.returncode})")
    ctx.emit("```")
    ctx.failures += done.returncode not in (0, 5)


def other_benchmarks(ctx: Context) -> None:
    """The other image benchmarks and seq-mnist: single runs (fp32, bf16) and stacked seeds (bf16)."""
    ctx.emit("```")
    splits = {}
    for dataset, model, precision, n in ctx.rows(OTHER_ROWS, SMOKE_OTHER_ROWS):
        if dataset not in splits:  # one benchmark's data on the device at a time
            splits = {dataset: synthetic_splits(get_dataset_class(dataset), torch.device(ctx.device), 0)}
        if n is None:
            tag = f"{model} {precision}"
            ctx.row(f"{dataset} {tag}", lambda: single_row(ctx, dataset, model, "fno", splits[dataset],
                                                           PRECISION[precision], tag))
        else:
            tag = f"{model} {precision} {n} seeds"
            ctx.row(f"{dataset} {tag}", lambda: stacked_row(ctx, dataset, model, splits[dataset], n,
                                                            PRECISION[precision], tag))
    ctx.emit("```")


def memory(ctx: Context) -> None:
    splits = synthetic_splits(get_dataset_class("seq-tinyimg"), torch.device(ctx.device), 0)
    ctx.emit("```")
    ctx.row("seq-tinyimg derpp 5120", lambda: single_row(ctx, "seq-tinyimg", "derpp", "fno", splits, [],
                                                         "derpp fp32 buffer 5120", buffer_size=5120))
    ctx.emit("```")


def projections(ctx: Context) -> None:
    """The paper's table at the best measured rates (from the rates every earlier section recorded)."""
    path = os.path.join(ctx.out_dir, "sections", "rates.jsonl")
    rates = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rates = [json.loads(line) for line in f if line.strip()]
    by_n = {}
    for rate in rates:
        if rate["seeds"] == "bare":
            continue
        cell = by_n.setdefault(rate["seeds"], {})
        key = (rate["dataset"], rate["model"], rate["head"])
        cell[key] = max(cell.get(key, 0.0), rate["steps_s"])
    for line in projection_lines(by_n, ctx.device) or ["- no rates were measured"]:
        ctx.emit(line)
    single, best = by_n.get("single", {}), {}
    for cell in by_n.values():
        for key, rate in cell.items():
            best[key] = max(best.get(key, 0.0), rate)
    total = sum(protocol_steps(d) / best[(d, m, "fno")] / 3600 * PAPER_TABLE_RUNS[d] / 2
                for d in DATASETS for m in ("er", "derpp") if (d, m, "fno") in best)
    covered = sum(PAPER_TABLE_RUNS[d] // 2 for d in DATASETS for m in ("er", "derpp") if (d, m, "fno") in best)
    ctx.emit(f"- **the paper's image-benchmark table ({covered} of 360 runs measured) at the best rate per cell "
             f"(single or stacked): {total:.1f} GPU-hours** (target: at most 24)")
    if ("seq-cifar10", "er", "fno") in single:
        ctx.emit(f"- seq-cifar10 masked-FNO ER single run: {single[('seq-cifar10', 'er', 'fno')]:.0f} steps/s = "
                 f"{single[('seq-cifar10', 'er', 'fno')] / AUTHORS_STEPS_S:.1f}x the authors' reported rate")


SECTIONS = [
    Section("environment", "Environment", 30, 60, environment),
    Section("seq-cifar10", "seq-cifar10: single runs, overhead, stacked seeds, compile", 165, 240, cifar10),
    Section("cuda-tests", "CUDA tests", 75, 120, cuda_tests),
    Section("other", "seq-cifar100, seq-tinyimg, seq-mnist", 80, 120, other_benchmarks),
    Section("memory", "Peak memory, seq-tinyimg DER++ FNO, buffer 5120", 30, 90, memory),
    Section("projection", "Projected GPU-hours of the paper's table (training only)", 25, 60, projections),
]


# ----------------------------------------------------------------------------- the driver

def run_section(opts) -> int:
    ctx = Context(opts)
    section = next(s for s in SECTIONS if s.name == opts.section)
    section.run(ctx)
    return 3 if ctx.failures else 0


def append_section(report: str, title: str, body: str, status: str) -> None:
    """The report with one more section, rewritten atomically (a reader never sees half a section)."""
    previous = open(report, encoding="utf-8").read() if os.path.exists(report) else ""
    text = f"{previous}## {title}\n\n{body.rstrip()}\n\n_{status}_\n\n"
    atomic_write_bytes(report, text.encode())


def drive(opts) -> int:
    os.makedirs(os.path.join(opts.out_dir, "sections"), exist_ok=True)
    report = os.path.join(opts.out_dir, "gpu_report.md")
    name = "CPU (smoke run: figures mean nothing)" if opts.smoke else torch.cuda.get_device_name(0)
    atomic_write_bytes(report, f"# GPU check: {name}\n\n".encode())
    total = opts.total_s or (SMOKE_TOTAL_S if opts.smoke else TOTAL_S)
    boxes = dict(box.split("=") for box in opts.box) if opts.box else {}
    start, failed = time.monotonic(), 0
    for section in SECTIONS:
        if opts.only and section.name not in opts.only.split(","):
            continue
        left = total - (time.monotonic() - start)
        box = min(float(boxes.get(section.name, section.smoke_box_s if opts.smoke else section.box_s)), left)
        path = section_path(opts.out_dir, section.name)
        if os.path.exists(path):
            os.remove(path)
        if left < 5:
            append_section(report, section.title, "", "skipped: the total time budget is spent")
            failed += 1
            continue
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--section", section.name, opts.out_dir] + \
            (["--smoke"] if opts.smoke else [])
        tic = time.monotonic()
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            code = proc.wait(timeout=box)
            status = {0: "finished", 3: "finished; some rows failed (see their lines)"}.get(
                code, f"failed (exit code {code})")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and anything it started
            proc.wait()
            code, status = -1, f"killed after its time box of {box:.0f} s: the rows above finished, the rest did not run"
        body = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        append_section(report, section.title, body, f"{status} in {time.monotonic() - tic:.0f} s")
        failed += code != 0
        print(f"gpu_check: {section.name}: {status} ({time.monotonic() - tic:.0f} s)", flush=True)
    with open(report, "a", encoding="utf-8") as f:
        f.write(f"Total time: {time.monotonic() - start:.0f} s\n")
    print(f"gpu_check: report in {report}; Total time {time.monotonic() - start:.0f} s", flush=True)
    # On a GPU a failed row or section is a finding, reported; in the smoke run it is a bug in the script.
    return 1 if opts.smoke and failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("out_dir")
    p.add_argument("--smoke", action="store_true", help="tiny step counts on the CPU: checks the script, not speed")
    p.add_argument("--total_s", type=float, default=None,
                   help=f"the whole check's time (default {TOTAL_S:.0f} s; smoke: {SMOKE_TOTAL_S:.0f} s)")
    p.add_argument("--only", default=None, help="comma list of sections to run (default: all): "
                                                + ", ".join(s.name for s in SECTIONS))
    p.add_argument("--box", action="append", metavar="SECTION=SECONDS", help="override a section's time box")
    p.add_argument("--section", default=None, help=argparse.SUPPRESS)  # the driver's child: run one section
    opts = p.parse_args(argv)
    names = {s.name for s in SECTIONS}
    for given in (opts.only.split(",") if opts.only else []) + [b.split("=")[0] for b in opts.box or []]:
        if given not in names:
            p.error(f"unknown section {given!r}; valid choices: {', '.join(s.name for s in SECTIONS)}")
    for box in opts.box or []:
        try:
            float(box.split("=", 1)[1])
        except (IndexError, ValueError):
            p.error(f"--box takes SECTION=SECONDS, got {box!r}")
    if not opts.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    return run_section(opts) if opts.section else drive(opts)


if __name__ == "__main__":
    sys.exit(main())
