"""utils.grid --pack_seeds: the pending runs of a configuration that differ only in their seed go to one
stacked ``main.py --seeds`` process, each seed keeping its own results file, checkpoint and log.

Real seq-digits runs (one epoch per task, on the CPU with one thread per process) check that a packed
grid writes the unpacked grid's results, skips the seeds already done, and that a pack killed mid-run
resumes every seed's checkpoint when the grid is started again with other packs.  Two runners with
different pack sizes on one folder run the stand-in ``main.py`` below (it records each seed it starts
and finishes), so that the claims, not the timing, are what is tested.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.test_grid import ROOT, wait_for
from utils.grid import claims
from utils.args import parse_args
from utils.checkpoint import CHECKPOINT_FILE
from utils.grid.cli import main as grid_main
from utils.grid.packs import form_packs, pack_size, packable
from utils.grid.runs import GridRun
from utils.grid.sweep import plan
from utils.runlock import lock_file
from utils.seeds import for_seed, seed_args

PARAMETERS = {"dataset": {"value": "seq-digits"}, "model": {"value": "er"}, "classifier": {"value": "fno"},
              "masked_softmax": {"value": 1}, "buffer_size": {"value": 50}, "load_best_args": {"value": True},
              "seed": {"values": [1, 2, 3]}, "device": {"value": "cpu"}, "nowand": {"value": 1}}
EXTRA = ["--n_epochs", "1"]
COMPARED = ("acc_matrix_class_il", "acc_matrix_task_il", "class_il", "task_il")


def write_sweep(folder, program="main.py", **values):
    parameters = {**PARAMETERS, **{k: {"values": v} for k, v in values.items()}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"program": program, "method": "grid", "parameters": parameters}))
    return str(path)


def grid(sweep, out, *flags):
    """The runner as a process, from the repository root (the sweep's program is main.py)."""
    return subprocess.Popen([sys.executable, "-m", "utils.grid", sweep, "--results_dir", str(out), *flags,
                             "--", *EXTRA], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))


def finish(process):
    printed = process.communicate(timeout=180)[0]
    return process.returncode, printed


def compared(path):
    with open(path) as f:
        results = json.load(f)
    return {key: results[key] for key in COMPARED}


def logs(out):
    folder = os.path.join(out, "logs")
    return "".join(open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder)))


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    """The grid of three seeds run one process per seed (started at once, in the background): a function
    returning {seed: results file}."""
    folder = tmp_path_factory.mktemp("unpacked")
    sweep = write_sweep(folder)
    process = grid(sweep, folder / "R", "--pack_seeds", "1", "--jobs", "2")

    def files():
        code, printed = finish(process)
        assert code == 0 and "start seed=1" in printed and "seeds=" not in printed, printed
        return {run.params["seed"]: run.results_file for run in plan(sweep, str(folder / "R"), extra=EXTRA)}
    yield files
    if process.poll() is None:
        process.kill()


def test_packs_group_exactly_the_runs_that_differ_in_their_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    sweep = write_sweep(tmp_path, model=["er", "derpp"], seed=[1, 2, 3, 4, 5])
    runs = plan(sweep, str(tmp_path / "R"), checkpoints=True, extra=EXTRA)
    for size in (2, 5):
        units = form_packs(runs, packable(runs, size, sys.stdout), size)
        assert sorted(r.results_file for u in units for r in u.members) == sorted(r.results_file for r in runs)
        assert [len(u.members) for u in units] == ([2, 2, 1] * 2 if size == 2 else [5, 5])
        for unit in units:
            first = unit.members[0]
            assert all({**r.params, "seed": 0} == {**first.params, "seed": 0} for r in unit.members)
            if isinstance(unit, GridRun):
                assert f"--seed={first.params['seed']}" in unit.argv
                continue
            seeds = [r.params["seed"] for r in unit.members]
            assert unit.label == f"model={first.params['model']} seeds={','.join(map(str, seeds))}"
            # main.py --seeds gives every seed the file and checkpoint folder its own run would have
            args = parse_args(unit.argv[unit.argv.index("main.py") + 1:])
            assert args.seeds == seeds and args.resume is True
            for run in unit.members:
                one = seed_args(args, run.params["seed"])
                assert (one.results_file, one.checkpoint_dir) == (run.results_file, run.checkpoint_dir)
                assert for_seed(args.results_file, run.params["seed"]) == run.results_file
    assert capsys.readouterr().out == ""  # nothing refused
    assert (pack_size("auto", True), pack_size("auto", False), pack_size(7, False)) == (64, 1, 7)
    # auto on the CPU: a configuration's seeds shared out over the processes that run at once
    assert [pack_size("auto", False, runs, slots) for slots in (1, 2, 3)] == [5, 3, 2]
    assert pack_size("auto", True, runs, 2) == 64
    assert packable(runs, 1, sys.stdout) == {}


def test_bad_pack_size_is_one_line(capsys):
    assert grid_main_exit(["sweeps/seq-digits.yaml", "--results_dir", "R", "--pack_seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pack_seeds" in err and "'0'" in err and "auto" in err


def grid_main_exit(argv):
    with pytest.raises(SystemExit) as exc:
        grid_main(argv)
    return exc.value.code


def test_unstackable_configurations_run_one_process_per_seed_and_say_why(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    sweep = write_sweep(tmp_path, model=["er", "er_ace"], seed=[1, 2])
    assert grid_main([sweep, "--results_dir", str(tmp_path / "R"), "--pack_seeds", "4", "--dry_run",
                      "--", *EXTRA]) == 0
    said = capsys.readouterr()
    commands = said.out.splitlines()
    assert len(commands) == 3
    assert "--seeds=1,2" in commands[0] and "--model=er " in commands[0]
    assert all("--model=er_ace" in c and "--seeds" not in c for c in commands[1:])
    assert [c.split("--seed=")[1].split()[0] for c in commands[1:]] == ["1", "2"]
    assert said.err.splitlines() == ["seeds not packed for model=er_ace (one process per seed): --seeds: method "
                                     "er_ace does not support stacked runs yet; run one process per seed "
                                     "(stacked: der, derpp, er, sgd)"]


def test_packed_grid_writes_the_unpacked_results_and_skips_the_seeds_done(tmp_path, unpacked):
    sweep = write_sweep(tmp_path)
    out = tmp_path / "R"
    code, printed = finish(grid(sweep, out, "--pack_seeds", "3"))
    assert code == 0, printed
    assert printed.count(" start ") == 1 and "start seeds=1,2,3" in printed
    assert all(f"[{n}/3] done  seed={n}" in printed for n in (1, 2, 3)) and "all 3 runs done" in printed
    runs = {run.params["seed"]: run for run in plan(sweep, str(out), checkpoints=True, extra=EXTRA)}
    reference = unpacked()
    for seed, run in runs.items():
        assert compared(run.results_file) == compared(reference[seed])
        assert f"seed {seed} runs in one process with seeds 1,2,3" in open(run.log_file).read()
    assert os.listdir(out / "checkpoints") == [] and not [f for f in os.listdir(out) if f.endswith(".claim")]
    # Skip-done per seed: only seeds 1 and 3 are missing, so only they are packed and run again.
    kept = os.stat(runs[2].results_file).st_mtime_ns
    for seed in (1, 3):
        os.remove(runs[seed].results_file)
    code, printed = finish(grid(sweep, out, "--pack_seeds", "3"))
    assert code == 0, printed
    assert "3 runs, 1 already done, 2 to run" in printed and "start seeds=1,3" in printed
    assert os.stat(runs[2].results_file).st_mtime_ns == kept
    for seed, run in runs.items():
        assert compared(run.results_file) == compared(reference[seed])


def test_a_killed_pack_resumes_every_seeds_checkpoint_in_other_packs(tmp_path, unpacked):
    """The pack's process SIGKILLed after its first task: every seed fails with its checkpoint kept; the
    grid started again with smaller packs (seeds 1,2 together, 3 alone) resumes each seed's checkpoint."""
    sweep = write_sweep(tmp_path)
    out = tmp_path / "R"
    runs = {run.params["seed"]: run for run in plan(sweep, str(out), checkpoints=True, extra=EXTRA)}
    first = grid(sweep, out, "--pack_seeds", "3")
    saved = [os.path.join(run.checkpoint_dir, CHECKPOINT_FILE) for run in runs.values()]
    assert wait_for(lambda: all(os.path.exists(path) for path in saved), timeout=120)
    with open(lock_file(runs[1].results_file)) as f:  # the run lock holds the pack process's pid
        os.kill(int(f.read().strip()), signal.SIGKILL)
    code, printed = finish(first)
    assert code == 1 and printed.count("FAILED (exit -9)") == 3, printed
    assert not any(os.path.exists(run.results_file) for run in runs.values())
    code, printed = finish(grid(sweep, out, "--pack_seeds", "2"))
    assert code == 0, printed
    assert "start seeds=1,2" in printed and "start seed=3" in printed
    written = logs(out)
    reference = unpacked()
    for seed, run in runs.items():
        assert f"Resuming from {run.checkpoint_dir}: " in written
        assert compared(run.results_file) == compared(reference[seed])
    assert os.listdir(out / "checkpoints") == []


STAND_IN = textwrap.dedent("""
    import argparse, json, os, time
    p = argparse.ArgumentParser()
    p.add_argument("--seed"); p.add_argument("--seeds"); p.add_argument("--results_file")
    p.add_argument("--checkpoint_dir"); p.add_argument("--resume", nargs="?")
    a, _ = p.parse_known_args()
    seeds = a.seeds.split(",") if a.seeds else [a.seed]

    def record(event, seed):
        with open(os.environ["LEDGER"], "a") as f:
            f.write(json.dumps({"event": event, "seed": seed, "file": a.results_file.replace("{seed}", seed),
                                "pid": os.getpid()}) + "\\n")

    for seed in seeds:
        record("start", seed)
    time.sleep(0.5)
    for seed in seeds:
        path = a.results_file.replace("{seed}", seed)
        with open(path + ".tmp", "w") as f:
            json.dump({"args": {"seed": int(seed)}}, f)
        os.replace(path + ".tmp", path)
        record("done", seed)
""")


def test_two_runners_with_different_pack_sizes_run_every_seed_once(tmp_path):
    (tmp_path / "main.py").write_text(STAND_IN)
    sweep = write_sweep(tmp_path, program=str(tmp_path / "main.py"), classifier=["fc", "fno"], seed=[1, 2, 3, 4, 5])
    out = tmp_path / "R"
    env = dict(os.environ, LEDGER=str(tmp_path / "ledger.jsonl"), PYTHONPATH=ROOT)
    runners = [subprocess.Popen([sys.executable, "-m", "utils.grid", sweep,
                                 "--any_program", "--results_dir", str(out), "--jobs", "2",
                                 "--pack_seeds", size, "--", *EXTRA], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env) for size in ("3", "2")]
    outputs = [finish(runner) for runner in runners]
    assert [code for code, _ in outputs] == [0, 0], outputs
    with open(tmp_path / "ledger.jsonl") as f:
        ledger = [json.loads(line) for line in f]
    runs = plan(sweep, str(out), extra=EXTRA)
    for event in ("start", "done"):
        files = [e["file"] for e in ledger if e["event"] == event]
        assert sorted(files) == sorted(r.results_file for r in runs), event  # each seed started and done once
    seeds_per_process = {}
    for event in ledger:
        if event["event"] == "start":
            seeds_per_process[event["pid"]] = seeds_per_process.get(event["pid"], 0) + 1
    assert len(seeds_per_process) < len(runs) and max(seeds_per_process.values()) <= 3  # packed, at most K=3
    assert not [f for f in os.listdir(out) if f.endswith(claims.CLAIM_SUFFIX)]
