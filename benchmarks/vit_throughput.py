"""Throughput of pretrained-model continual learning at 224 pixels, on synthetic data of ImageNet-R's shapes.

Prints, for one ViT backbone (random weights: speed does not depend on them):

* training: SLCA's optimizer steps (the whole network, the device transform's random resized crop and
  flip included) in images/s and ms/step;
* feature extraction: the frozen backbone's forward pass on test-transformed images (what SimpleCIL and
  RanPAC compute once per image with the feature cache), images/s;
* peak device memory (CUDA) and the memory of ImageNet-R's uint8 splits kept on the device.

Examples (from the repository root)::

    python -m benchmarks.vit_throughput --device cuda --amp bf16
    python -m benchmarks.vit_throughput --device cpu --backbone vit-micro --batch_size 8 --steps 2 --warmup 1
"""
from __future__ import annotations

import argparse
import time

import torch

from datasets.seq_imagenet_r import SequentialImageNetR
from datasets.utils.continual_dataset import Split
from datasets.utils.image_folders import STORED_SIDE
from utils.args import parse_args
from utils.training import build_run

IMAGENET_R_IMAGES = 30000


class SyntheticImageNetR(SequentialImageNetR):
    """ImageNet-R's protocol with random uint8 images of the stored size, ``per_class`` of each class."""

    def __init__(self, per_class: int):
        super().__init__("synthetic")
        self.per_class = per_class

    def read_splits(self):
        g = torch.Generator().manual_seed(0)
        n = self.num_classes * self.per_class
        x = torch.randint(0, 256, (n, 3, STORED_SIDE, STORED_SIDE), dtype=torch.uint8, generator=g)
        y = torch.arange(self.num_classes).repeat_interleave(self.per_class)
        return Split(x, y), Split(x[: self.num_classes], y[: self.num_classes])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - tic) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="vit_base_patch16_224")
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args(argv)
    args = parse_args(["--dataset", "seq-imagenet-r", "--model", "slca", "--lr", "0.01", "--backbone", a.backbone,
                       "--pretrained", "none", "--device", a.device, "--amp", a.amp, "--batch_size",
                       str(a.batch_size), "--results_file", "none"])
    run = build_run(args, SyntheticImageNetR(per_class=max(1, -(-a.batch_size // 20))))
    device, model = torch.device(args.device), run.model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.prepare_task(0)
    model.train()
    idx = torch.nonzero(run.train.task == 0).flatten()[: a.batch_size]
    raw, labels = run.train.x[idx], run.train.y[idx]
    train_s = timed(lambda: model.observe(run.transform.train(raw, run.augment_generator), labels, raw),
                    a.steps, a.warmup, device)
    backbone = model.network.backbone
    backbone.eval()

    @torch.no_grad()
    def extract():
        with model.autocast():
            backbone(run.transform.test(raw))

    extract_s = timed(extract, a.steps, a.warmup, device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    stored = IMAGENET_R_IMAGES * 3 * STORED_SIDE ** 2 / 2 ** 30
    print(f"{a.backbone} on {device} (amp {a.amp}), batch {a.batch_size}: "
          f"training {a.batch_size / train_s:.1f} images/s ({1000 * train_s:.1f} ms/step) | "
          f"feature extraction {a.batch_size / extract_s:.1f} images/s | peak memory {peak:.2f} GiB | "
          f"ImageNet-R uint8 on the device {stored:.2f} GiB")


if __name__ == "__main__":
    main()
