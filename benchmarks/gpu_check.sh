#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--smoke] OUT_DIR
# Runs from the repository root with the Python on PATH; needs torch and numpy only (no wandb, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu_check "$@"
