"""Checkpoints and --resume: a run killed at any point and resumed ends exactly like an uninterrupted one.

Each interruption happens in a real subprocess at a chosen point (a SIGKILL or
SIGINT the process sends itself mid-task, or while the checkpoint file is
being renamed into place); the resumption and the uninterrupted reference run
in this process.  On the CPU with the same seed the accuracies must be equal,
not merely close.  Every process computes with one thread, so that the
interrupted and the resuming processes do the same floating-point work.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import main
from utils.checkpoint import CHECKPOINT_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--dataset", "seq-digits", "--buffer_size", "50", "--load_best_args", "--masked_softmax", "1",
        "--n_epochs", "1", "--seed", "3", "--device", "cpu", "--nowand", "1"]
CONFIGS = {"derpp-fno": ["--model", "derpp", "--classifier", "fno"],
           "er-fc": ["--model", "er", "--classifier", "fc"]}

# Runs main.main with one interruption planted: at a training step of task 3, or at the rename
# of the second checkpoint (after task 2; by then the file of task 1 is in place).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import main
    from utils.progress import ProgressBar
    where, signame = sys.argv[1], sys.argv[2]
    sig = getattr(signal, signame)

    if where == "mid-task":
        def update(self, label, step, total, loss):
            if label.startswith("Task 3/") and step == 7:
                os.kill(os.getpid(), sig)
        ProgressBar.update = update
    else:
        real_replace, renames = os.replace, []
        def replace(src, dst):
            if dst.endswith({ckpt!r}):
                renames.append(dst)
                if len(renames) == 2:
                    os.kill(os.getpid(), sig)   # SIGINT must be held back until the rename is done
            return real_replace(src, dst)
        os.replace = replace
    sys.exit(main.main(sys.argv[3:]))
""")


def results_without_timing(path):
    with open(path) as f:
        results = json.load(f)
    for timing in ("wall_time_s", "train_time_s", "start_time"):
        results.pop(timing)
    for flag in ("results_file", "checkpoint_dir", "resume"):
        results["args"].pop(flag)
    return results


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Start every interruption scenario at once (they are independent subprocesses)."""
    base = tmp_path_factory.mktemp("interrupted")
    driver = base / "driver.py"
    driver.write_text(DRIVER.format(root=ROOT, ckpt=CHECKPOINT_FILE))
    scenarios = {("mid-task", "SIGKILL"): "derpp-fno", ("checkpoint-write", "SIGKILL"): "er-fc",
                 ("mid-task", "SIGINT"): "er-fc", ("checkpoint-write", "SIGINT"): "derpp-fno"}
    procs = {}
    for (where, sig), config in scenarios.items():
        ckpt = base / f"{where}-{sig}"
        argv = BASE + CONFIGS[config] + ["--checkpoint_dir", str(ckpt), "--results_file", str(ckpt / "r.json")]
        procs[where, sig] = (config, ckpt, argv, subprocess.Popen(
            [sys.executable, str(driver), where, sig] + argv,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=base,
            env=dict(os.environ, OMP_NUM_THREADS="1")))
    done = {}
    for key, (config, ckpt, argv, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        done[key] = (config, ckpt, argv, proc.returncode, err)
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of each configuration (no checkpointing)."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for config, flags in CONFIGS.items():
        path = base / f"{config}.json"
        assert main.main(BASE + flags + ["--results_file", str(path)]) == 0
        out[config] = results_without_timing(path)
    return out


def stages_in(ckpt_dir):
    return torch.load(os.path.join(ckpt_dir, CHECKPOINT_FILE), weights_only=True)["history"]["stages_done"]


@pytest.mark.parametrize("where,sig,stages_saved", [
    ("mid-task", "SIGKILL", 2),          # killed in task 3: tasks 1-2 saved
    ("checkpoint-write", "SIGKILL", 1),  # killed while saving task 2: the file of task 1 survives
    ("mid-task", "SIGINT", 2),           # Ctrl-C in task 3: clean exit, tasks 1-2 saved
    ("checkpoint-write", "SIGINT", 2),   # Ctrl-C while saving task 2: the save completes first
])
def test_interrupted_then_resumed_equals_uninterrupted(interrupted, reference, where, sig, stages_saved):
    config, ckpt, argv, returncode, err = interrupted[where, sig]
    if sig == "SIGKILL":
        assert returncode == -signal.SIGKILL
    else:
        assert returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
    assert not (ckpt / "r.json").exists()
    assert stages_in(ckpt) == stages_saved
    assert main.main(argv + ["--resume"]) == 0
    assert results_without_timing(ckpt / "r.json") == reference[config]
    assert not [f for f in os.listdir(ckpt) if f.endswith(".tmp")], "stale temporary checkpoint left behind"


def test_resume_refuses_other_arguments_and_existing_checkpoint(interrupted, capsys):
    config, ckpt, argv, _, _ = interrupted["mid-task", "SIGINT"]
    before = (ckpt / CHECKPOINT_FILE).read_bytes()
    changed = [a if a != "3" else "4" for a in argv]  # --seed 3 -> 4
    changed[changed.index("--n_epochs") + 1] = "2"
    assert main.main(changed + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--n_epochs 2 (checkpoint: 1)" in err and "--seed 4 (checkpoint: 3)" in err
    assert main.main(argv) == 2  # a checkpoint exists and --resume was not given
    assert "add --resume" in capsys.readouterr().err
    assert (ckpt / CHECKPOINT_FILE).read_bytes() == before


def test_resume_without_checkpoint_starts_fresh(tmp_path, reference, capsys):
    out = tmp_path / "r.json"
    argv = BASE + CONFIGS["er-fc"] + ["--checkpoint_dir", str(tmp_path / "ck"), "--resume",
                                      "--results_file", str(out)]
    assert main.main(argv) == 0
    assert "starting from the first task" in capsys.readouterr().out
    assert results_without_timing(out) == reference["er-fc"]
    assert stages_in(tmp_path / "ck") == 5


def _draws(run):
    import random
    import numpy as np
    gens = [run.data_generator, run.augment_generator, run.model.setting.buffer_generator]
    out = [torch.randperm(50, generator=g, device=g.device).tolist() for g in gens]
    out += [torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()]
    if run.model.device.type == "cuda":
        out.append(torch.rand(3, device=run.model.device).tolist())
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_checkpoint_restores_every_random_stream_and_the_model(tmp_path, device):
    from utils.args import parse_args
    from utils.checkpoint import load_checkpoint, restore_run, save_checkpoint
    from utils.training import build_run
    argv = [a if a != "cpu" else device for a in BASE] + CONFIGS["derpp-fno"]
    args = parse_args(argv + ["--checkpoint_dir", str(tmp_path), "--resume"])
    run = build_run(args)
    run.model.buffer.add(examples=run.train.x[:20], labels=run.train.y[:20],
                         logits=torch.randn(20, 10, device=run.model.device))
    history = {"stages_done": 1, "rows_cil": [[50.0]], "rows_til": [[90.0]], "collapse": [], "n_steps": 3,
               "train_time_s": 0.5, "wall_time_s": 1.0}
    save_checkpoint(str(tmp_path), run, history, {"step": 7, "run_id": None})
    expected, weights = _draws(run), {k: v.clone() for k, v in run.model.state_dict().items()}
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(1.0)
    run.model.buffer.add(examples=run.train.x[:5], labels=run.train.y[:5],
                         logits=torch.zeros(5, 10, device=run.model.device))
    state = load_checkpoint(args)
    restore_run(run, state)
    assert state["history"] == history and state["logger"] == {"step": 7, "run_id": None}
    assert _draws(run) == expected
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert run.model.buffer.num_seen == 20
