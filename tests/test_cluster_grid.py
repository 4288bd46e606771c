"""The grid runner on many devices and many machines: each run pinned to one CUDA device
(CUDA_VISIBLE_DEVICES, ``--gpus``, ``--per_gpu``), and claims (``utils.claims``) so that runners
sharing one results folder run every run once, also when one of them is killed outright.

The runs are test_grid's stand-in program; its ledger records each start and end with the
CUDA_VISIBLE_DEVICES the run got.
"""
import json
import os
import signal
import socket
import subprocess
import sys

from tests.test_grid import ROOT, env, events, grid_command, make_sweep, results_in, wait_for  # noqa: F401
from utils.grid import claims
from utils.grid.cli import main as grid_main
from utils.grid.processes import device_slots, visible_devices
from utils.grid.sweep import plan


def test_device_slots_spread_runs_over_the_devices():
    assert device_slots(["0", "1"]) == ["0", "1"]
    assert device_slots(["0", "1"], per_gpu=2) == ["0", "1", "0", "1"]
    assert device_slots(["0", "1", "2", "3"], per_gpu=2, jobs=3) == ["0", "1", "2"]
    assert device_slots([], per_gpu=4, jobs=3) == [None, None, None]
    assert device_slots([]) == [None]


def test_visible_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []


def busiest(starts, ends, device):
    """The most runs that were going at once on ``device``, from the ledger's start and end times."""
    moments = sorted([(e["t"], 1) for e in starts if e["cuda"] == device]
                     + [(e["t"], -1) for e in ends if e["cuda"] == device])
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def test_each_run_is_pinned_to_one_device_per_gpu_at_a_time(env, capsys):
    sweep = make_sweep(env, seeds=(1, 2, 3, 4), sleep=0.3)
    out = env / "R"
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--gpus", "0,1", "--per_gpu", "2"]) == 0
    starts, ends = events(env, "start"), events(env, "done")
    assert len(starts) == len(ends) == 8
    assert {e["cuda"] for e in starts} == {"0", "1"}
    assert all(busiest(starts, ends, d) <= 2 for d in ("0", "1"))
    assert "4 at a time (device 0, device 1)" in capsys.readouterr().out


def test_default_devices_are_the_visible_ones_and_none_turns_pinning_off(env, monkeypatch, capsys):
    sweep = make_sweep(env, seeds=(1,), sleep=0.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert grid_main([sweep, "--any_program", "--results_dir", str(env / "A")]) == 0
    assert sorted(e["cuda"] for e in events(env, "start")) == ["5", "7"]
    os.remove(env / "ledger.jsonl")
    assert grid_main([sweep, "--any_program", "--results_dir", str(env / "B"), "--gpus", "none", "--jobs", "2"]) == 0
    assert [e["cuda"] for e in events(env, "start")] == ["5,7", "5,7"]  # the runner's own environment


def test_claim_is_exclusive_and_released(tmp_path):
    results = str(tmp_path / "run.json")
    first = claims.try_claim(results)
    assert first is not None and os.path.exists(tmp_path / "run.claim")
    held = json.load(open(tmp_path / "run.claim"))
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    assert claims.try_claim(results) is None  # a live owner (this process)
    first.release()
    assert not os.path.exists(tmp_path / "run.claim")
    assert claims.try_claim(results) is not None


def write_claim(path, host, pid, age_s=0.0):
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid, "start": 0.0}, f)
    past = os.stat(path).st_mtime - age_s
    os.utime(path, (past, past))


def test_stale_claims_are_taken_over(tmp_path):
    results = str(tmp_path / "run.json")
    path = claims.claim_path(results)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_claim(path, socket.gethostname(), dead.pid)  # this host, its process gone
    taken = claims.try_claim(results)
    assert taken is not None and json.load(open(path))["pid"] == os.getpid()
    taken.release()
    write_claim(path, "elsewhere", 1, age_s=10.0)  # another host, heartbeat recent enough
    assert claims.try_claim(results, timeout_s=60.0) is None
    write_claim(path, "elsewhere", 1, age_s=120.0)  # another host, heartbeat too old
    assert claims.try_claim(results, timeout_s=60.0) is not None
    assert [n for n in os.listdir(tmp_path) if "stale" in n] == []


def test_three_runners_on_one_folder_one_killed_run_every_run_once(env):
    sweep = make_sweep(env, seeds=(1, 2, 3, 4, 5), sleep=0.4)
    out = env / "R"
    first = subprocess.Popen(grid_command(sweep, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    assert wait_for(lambda: len(events(env, "start")) >= 1)
    others = [subprocess.Popen(grid_command(sweep, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    first.kill()  # SIGKILL mid-run: its run gets SIGTERM from the kernel and stops without results
    first.wait()
    outputs = [p.communicate(timeout=120)[0] for p in others]
    assert [p.returncode for p in others] == [0, 0], outputs
    done = [e["name"] for e in events(env, "done")]
    runs = plan(sweep, str(out))
    assert sorted(done) == sorted(os.path.basename(r.results_file) for r in runs)  # each finished exactly once
    assert len(results_in(out)) == len(runs) == 10
    for name in results_in(out):  # none torn
        assert json.load(open(out / name))["accuracy"] > 50
    assert [n for n in os.listdir(out) if n.endswith((claims.CLAIM_SUFFIX, ".lock")) or "stale" in n] == []
    assert os.listdir(out / "checkpoints") == []
    assert any("done by other runners" in o for o in outputs)
