"""CPU cost of one online seq-cifar10 run (docs/online.md), extrapolated from a short measurement.

Writes synthetic CIFAR-10 files of the real size (50 000 training and 10 000
test images, torchvision's layout), builds the online run (``--online 1``, the
reduced ResNet-18, ``--load_best_args``) through the real trainer, takes
``--warmup`` steps on task 1 (the buffer fills), times ``--steps`` steps of
stream 10 + replay 10 on task 2 and one evaluation of task 1's 2000 test
images, and prints wall and CPU seconds and the projection to the full run:
5000 optimizer steps and the protocol's evaluations (the random network on
every task, the seen tasks after each task, the next task after each task but
the last: 48 000 images).  CPU seconds are what an otherwise idle core would
take with one thread; on a shared machine the wall time says more about the
load than about the run.  Example::

    python -m benchmarks.online_cpu --model er --num_threads 1 --steps 200
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from datasets.utils.cifar_io import write_cifar
from utils.args import parse_args
from utils.training import build_run, evaluate, stages, train_stage

TASKS, TRAIN_PER_TASK, TEST_PER_TASK = 5, 10_000, 2_000


def eval_images_of_protocol() -> int:
    """Test images the trainer evaluates in one run: all before training, the seen ones after each task,
    the next task's after each task but the last."""
    seen = sum(TEST_PER_TASK * (t + 1) for t in range(TASKS))
    return TASKS * TEST_PER_TASK + seen + (TASKS - 1) * TEST_PER_TASK


def timed(fn) -> tuple:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.online_cpu", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--model", default="er", help="er or er_ace (default er)")
    p.add_argument("--buffer_size", type=int, default=200)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=200, help="timed optimizer steps (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps on task 1 first (default 20)")
    opts = p.parse_args(argv)
    rng = np.random.RandomState(0)

    def split(per_class):
        y = np.repeat(np.arange(10), per_class)
        return rng.randint(0, 256, (len(y), 3, 32, 32), dtype=np.uint8), y

    with tempfile.TemporaryDirectory(prefix="synthetic-cifar10-") as root:
        write_cifar(root, "cifar10", split(TRAIN_PER_TASK // 2), split(TEST_PER_TASK // 2))
        flags = ["--dataset", "seq-cifar10", "--model", opts.model, "--online", "1", "--backbone", "resnet18-reduced",
                 "--buffer_size", str(opts.buffer_size), "--load_best_args", "--data_path", root, "--device", "cpu",
                 "--num_threads", str(opts.num_threads), "--results_file", "none"]
        args = parse_args(flags + ["--max_steps_per_task", str(opts.warmup)])
        run = build_run(args)
        plan = stages(run)
        train_stage(run, plan[0])
        run.args.max_steps_per_task = opts.steps
        step_wall, step_cpu = (t / opts.steps for t in timed(lambda: train_stage(run, plan[1])))
        eval_wall, eval_cpu = (t / TEST_PER_TASK for t in timed(lambda: evaluate(run, 1)))
    steps = TASKS * TRAIN_PER_TASK // args.batch_size
    images = eval_images_of_protocol()
    print(f"online seq-cifar10 {opts.model}, reduced ResNet-18, buffer {opts.buffer_size}, batch {args.batch_size} + "
          f"replay {args.minibatch_size}, {opts.num_threads} thread(s): {step_wall:.3f} s/step wall, "
          f"{step_cpu:.3f} s/step cpu over {opts.steps} steps; evaluation {1000 * eval_wall:.2f} ms/image wall, "
          f"{1000 * eval_cpu:.2f} ms/image cpu", flush=True)
    print(f"projected full run ({steps} steps, {images} evaluated images): "
          f"{(steps * step_wall + images * eval_wall) / 60:.1f} min wall at this load, "
          f"{(steps * step_cpu + images * eval_cpu) / 60:.1f} min of cpu time", flush=True)


if __name__ == "__main__":
    main()
