"""The local grid runner: expansion and commands, skip of finished runs, failures, and stop/restart
(killed outright, or interrupted) without losing or repeating a run.

The runs here are a tiny stand-in program named by the sweep's ``program`` key
(as ``main_lt.py`` sweeps name theirs): it records each start in a ledger, waits
a little, and writes its results file atomically like main.py does.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from utils.errors import UserError
from utils.flags import results_name
from utils.grid.cli import main as grid_main
from utils.grid.sweep import parse_extra, parse_set, plan, render_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import argparse, json, os, signal, sys, time
    from utils.errors import UserError
    from utils.runlock import run_lock
    p = argparse.ArgumentParser()
    p.add_argument("--method"); p.add_argument("--seed", type=int); p.add_argument("--sleep", type=float)
    p.add_argument("--fail", type=int, default=0); p.add_argument("--results_file")
    p.add_argument("--checkpoint_dir"); p.add_argument("--resume", action="store_true")
    p.add_argument("--data_path"); p.add_argument("--n_epochs", type=int); p.add_argument("--nowand", type=int)
    a = p.parse_args()
    name = os.path.basename(a.results_file)

    def record(event, **more):
        with open(os.environ["LEDGER"], "a") as f:
            f.write(json.dumps({"event": event, "name": name, "pid": os.getpid(), "t": time.time(),
                                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), **more}) + "\\n")

    def finish():
        tmp = a.results_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": vars(a), "accuracy": 50.0 + a.seed, "pid": os.getpid()}, f)
        os.replace(tmp, a.results_file)
        record("done")

    def stopped(signum, frame):  # like main.py: SIGTERM stops the run cleanly (exit 130)
        record("stopped", signal=signum)
        if str(a.seed) == os.environ.get("FINISH_ON_TERM"):  # a run that completes while being stopped
            finish(); sys.exit(0)
        sys.exit(130)

    signal.signal(signal.SIGTERM, stopped)
    try:
        with run_lock(a.results_file, a.checkpoint_dir):
            if a.checkpoint_dir:  # stands for main.py's checkpoint: records that the run was resumed
                os.makedirs(a.checkpoint_dir, exist_ok=True)
                marker = os.path.join(a.checkpoint_dir, "attempts")
                attempts = (open(marker).read() if os.path.exists(marker) else "") + "x"
                open(marker, "w").write(attempts)
            record("start", sigint_ignored=signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
            time.sleep(float(os.environ.get("SLEEP", a.sleep)))
            if a.fail:
                print("deliberate failure", a.method, a.seed); sys.exit(3)
            finish()
    except UserError as exc:
        print(f"fake_lt.py: error: {exc}"); sys.exit(2)
""")


def make_sweep(tmp_path, seeds=(1, 2, 3), sleep=0.3, fail=(0,), command=None):
    program = tmp_path / "fake_lt.py"
    program.write_text(PROGRAM)
    sweep = {"program": str(program), "method": "grid",
             "parameters": {"method": {"values": ["a", "b"]}, "seed": {"values": list(seeds)},
                            "sleep": {"value": sleep}, "fail": {"values": list(fail)},
                            "results_dir": {"value": "ignored/by/the/runner"}}}
    if command:
        sweep["command"] = command
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def ledger(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.setenv("PYTHONPATH", ROOT)  # the stand-in program takes the run lock as main.py does
    monkeypatch.delenv("SLEEP", raising=False)
    monkeypatch.delenv("FINISH_ON_TERM", raising=False)
    monkeypatch.delenv("FNO_CL_DATA", raising=False)
    yield tmp_path
    for event in events(tmp_path, "start"):  # a failed test leaves no run behind
        if alive(event["pid"]):
            os.kill(event["pid"], signal.SIGKILL)


def events(tmp_path, kind):
    return [e for e in ledger(tmp_path / "ledger.jsonl") if e["event"] == kind]


def alive(pid):
    """Whether the process exists and is not a zombie (an orphan's zombie waits for whoever reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def results_in(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".json"))


def test_results_name_is_canonical_and_ignores_operational_flags():
    a = results_name({"seed": 1, "lr": 0.1, "load_best_args": True, "model": "er", "device": "cuda"})
    b = results_name({"model": "er", "lr": "0.1", "seed": "1", "load_best_args": 1, "results_dir": "x"})
    assert a == b == "load_best_args=1,lr=0.1,model=er,seed=1"
    assert results_name({"lr": "1e-3"}) == results_name({"lr": 0.001})
    assert results_name({"n": 5120.0}) == "n=5120"
    odd = results_name({"name": "a/b c"})
    assert "/" not in odd and " " not in odd and odd != results_name({"name": "a_b_c"})


def test_render_command_matches_wandbs_own():
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    params = {"model": "er", "load_best_args": True, "compile": False, "lr": 0.1, "seed": 3}
    theirs = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    for form in ("args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags"):
        assert render_command(["${" + form + "}"], "p", params) == theirs[form], form


def test_render_command_like_a_wandb_agent():
    params = {"model": "er", "load_best_args": True, "compile": False, "lr": 0.1}
    assert render_command(["${interpreter}", "${program}", "${args}"], "main.py", params, "py") == [
        "py", "main.py", "--model=er", "--load_best_args=True", "--compile=False", "--lr=0.1"]
    assert render_command(["${program}", "${args_no_boolean_flags}", "--x"], "p", params, "py") == [
        "p", "--model=er", "--load_best_args", "--lr=0.1", "--x"]
    with pytest.raises(UserError, match=r"unsupported sweep command macro \$\{args_json_file\}"):
        render_command(["${args_json_file}"], "p", params)


def test_plan_honours_program_and_places_results(env):
    sweep = make_sweep(env, command=["${interpreter}", "${program}", "${args}"])
    runs = plan(sweep, str(env / "R"))
    assert len(runs) == 6 and [r.params["method"] for r in runs] == ["a"] * 3 + ["b"] * 3
    first = runs[0]
    assert first.argv[:2] == [sys.executable, str(env / "fake_lt.py")]
    assert not any("results_dir" in a for a in first.argv)
    assert first.argv[-1] == f"--results_file={first.results_file}"
    assert first.results_file == str(env / "R" / "fail=0,method=a,seed=1,sleep=0.3.json")
    assert first.label == "method=a seed=1"


@pytest.mark.parametrize("text,message", [
    ("method: random\nprogram: x.py\nparameters: {a: {value: 1}}", "runs 'method: grid' only"),
    ("program: x.py\nparameters: {a: {min: 1, max: 2}}", "needs 'value' or a non-empty list"),
    ("program: nowhere.py\nparameters: {a: {value: 1}}", "program 'nowhere.py'"),
    ("parameters: {a: {value: 1}}", "missing key 'program'"),
    ("program: [", "not valid YAML"),
])
def test_bad_sweep_files(tmp_path, monkeypatch, capsys, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("")
    (tmp_path / "s.yaml").write_text(text)
    assert grid_main(["s.yaml", "--results_dir", "R"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_runs_skips_finished_and_reports_failures(env, capsys):
    sweep = make_sweep(env, seeds=(1, 2), sleep=0.0, fail=(0, 1))
    out = env / "R"
    out.mkdir()
    finished = out / "fail=0,method=a,seed=1,sleep=0.json"
    finished.write_text('{"kept": true}')
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert "8 runs, 1 already done, 7 to run, 2 at a time" in printed
    assert json.loads(finished.read_text()) == {"kept": True}
    started = [e["name"] for e in ledger(env / "ledger.jsonl") if e["event"] == "start"]
    assert len(started) == 7 and finished.name not in started
    assert len(results_in(out)) == 4  # the four runs with fail=0
    assert printed.count("FAILED (exit 3)") == 4 and "deliberate failure a 1" in printed
    assert "4 run(s) failed" in printed
    # A restart runs only the failed ones again.
    assert grid_main([sweep, "--any_program", "--results_dir", str(out)]) == 1
    assert "8 runs, 4 already done, 4 to run" in capsys.readouterr().out


def grid_command(sweep, out, *flags):
    return [sys.executable, "-m", "utils.grid", sweep, "--any_program", "--results_dir", str(out), *flags]


def test_killed_runner_restarts_without_losing_or_repeating_runs(env):
    """SIGKILL the runner mid-grid (a machine going down, an OOM kill), then restart: its runs die with it."""
    sweep = make_sweep(env, seeds=(1, 2, 3, 4), sleep=0.4)
    out = env / "R"
    command = grid_command(sweep, out, "--jobs", "2")
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: out.exists() and len(results_in(out)) >= 3)
    runner.kill()
    runner.wait()
    assert wait_for(lambda: not any(alive(e["pid"]) for e in events(env, "start")), timeout=10)
    done_before = set(results_in(out))
    assert 3 <= len(done_before) < 8
    starts_before = len(ledger(env / "ledger.jsonl"))
    restarted = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"{len(done_before)} already done" in restarted.stdout
    expected = sorted(r.results_file for r in plan(sweep, str(out)))
    assert [str(out / f) for f in results_in(out)] == expected
    rerun = [e["name"] for e in ledger(env / "ledger.jsonl")[starts_before:] if e["event"] == "start"]
    assert not set(rerun) & done_before and len(rerun) == len(set(rerun)) == 8 - len(done_before)
    done = [e["name"] for e in events(env, "done")]
    assert sorted(done) == sorted(set(done)) == results_in(out)  # no run finished twice
    for path in expected:
        with open(path) as f:
            assert json.load(f)["accuracy"] > 50


def test_runs_die_with_a_killed_runner_and_a_restart_resumes_them_once(env):
    """The runs of a SIGKILLed runner get SIGTERM from the kernel (they stop cleanly, checkpoint kept)
    instead of going on as orphans that a restarted runner would start a second time."""
    sweep = make_sweep(env, seeds=(1,), sleep=60.0)
    out = env / "R"
    command = grid_command(sweep, out, "--jobs", "2", "--checkpoints")
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len(events(env, "start")) == 2)
    runner.kill()
    runner.wait()
    first = [e["pid"] for e in events(env, "start")]
    assert wait_for(lambda: not any(alive(pid) for pid in first), timeout=10), "runs outlived the runner"
    assert sorted(e["pid"] for e in events(env, "stopped")) == sorted(first)
    assert all(e["signal"] == signal.SIGTERM for e in events(env, "stopped"))
    restarted = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, SLEEP="0"))
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "all 2 runs done" in restarted.stdout
    runs = plan(sweep, str(out), checkpoints=True)
    assert results_in(out) == sorted(os.path.basename(r.results_file) for r in runs)
    assert len(events(env, "start")) == 4 and len(events(env, "done")) == 2
    for run in runs:
        assert not os.path.exists(run.checkpoint_dir)  # resumed (2nd attempt), finished, cleaned up
        assert not os.path.exists(run.results_file + ".lock")
    assert os.listdir(out / "checkpoints") == []


def test_interrupted_runner_stops_its_runs(env):
    sweep = make_sweep(env, seeds=(1, 2, 3), sleep=30.0)
    out = env / "R"
    runner = subprocess.Popen(grid_command(sweep, out, "--jobs", "2", "--no_checkpoints"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(events(env, "start")) == 2)
    runner.send_signal(signal.SIGINT)
    stdout, _ = runner.communicate(timeout=30)
    assert runner.returncode == 130
    assert "interrupted: stopped 2 running run(s)" in stdout
    assert stdout.count("interrupted, nothing written: the next start runs it from the beginning") == 2
    for event in ledger(env / "ledger.jsonl"):
        assert not alive(event["pid"])
    assert len(events(env, "stopped")) == 2  # told to stop (SIGTERM), not killed
    assert results_in(out) == []


def test_background_runner_stopped_with_sigterm_reports_what_each_run_left(env):
    """Started with ``&`` from a script, the runner and its runs ignore SIGINT: they are stopped with SIGTERM.
    One run completes while stopping, one keeps its checkpoint; the report says which."""
    sweep = make_sweep(env, seeds=(1, 2), sleep=60.0)
    out = env / "R"
    report = env / "runner.out"
    script = " ".join(map(shlex.quote, grid_command(sweep, out, "--jobs", "2", "--checkpoints")))
    shell = subprocess.Popen(["sh", "-c", f"{script} >{shlex.quote(str(report))} 2>&1 & echo $!; wait $!"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, FINISH_ON_TERM="1"))
    runner_pid = int(shell.stdout.readline())
    assert wait_for(lambda: len(events(env, "start")) == 2)
    assert all(e["sigint_ignored"] for e in events(env, "start"))  # what a background job inherits
    os.kill(runner_pid, signal.SIGTERM)
    shell.communicate(timeout=30)
    printed = report.read_text()
    assert "interrupted: stopped 2 running run(s)" in printed, printed
    runs = {r.params["seed"]: r for r in plan(sweep, str(out), checkpoints=True) if r.params["method"] == "a"}
    assert f"{runs[1].label}: finished while stopping, results written ({runs[1].results_file})" in printed
    assert (f"{runs[2].label}: interrupted, checkpoint kept ({runs[2].checkpoint_dir}): "
            f"the next start resumes it") in printed
    assert sorted(e["signal"] for e in events(env, "stopped")) == [signal.SIGTERM] * 2
    assert os.path.exists(runs[1].results_file) and not os.path.exists(runs[1].checkpoint_dir)
    assert open(os.path.join(runs[2].checkpoint_dir, "attempts")).read() == "x"


def test_run_locked_by_another_process_is_refused_not_run_twice(env, capsys):
    """A run another process is running (here: this test holds its lock) fails with one line and is
    left alone; once the lock is free a restart runs it."""
    from utils.runlock import run_lock
    sweep = make_sweep(env, seeds=(1,), sleep=0.0)
    out = env / "R"
    busy = plan(sweep, str(out), checkpoints=True)[0]
    with run_lock(busy.results_file):
        assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--checkpoints"]) == 1
    printed = capsys.readouterr().out
    assert (f"FAILED (exit 2) {busy.label}: fake_lt.py: error: another process (pid {os.getpid()}) "
            f"is already running this run: {busy.results_file}") in printed
    assert [e["name"] for e in events(env, "start")] == [os.path.basename(r.results_file)
                                                         for r in plan(sweep, str(out))[1:]]
    assert not os.path.exists(busy.checkpoint_dir)  # the refused process wrote nothing
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--checkpoints"]) == 0
    assert "2 runs, 1 already done, 1 to run" in capsys.readouterr().out


def test_checkpoints_option_resumes_and_cleans_up(env, capsys):
    sweep = make_sweep(env, seeds=(1,), sleep=0.0, fail=(0, 1))
    out = env / "R"
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--checkpoints"]) == 1
    runs = {r.params["fail"]: r for r in plan(sweep, str(out), checkpoints=True) if r.params["method"] == "a"}
    assert runs[0].argv[-2:] == [f"--checkpoint_dir={runs[0].checkpoint_dir}", "--resume"]
    assert os.path.exists(runs[0].results_file) and not os.path.exists(runs[0].checkpoint_dir)
    failed = runs[1].checkpoint_dir  # kept for the next attempt, which resumes from it
    assert open(os.path.join(failed, "attempts")).read() == "x"
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--checkpoints"]) == 1
    assert open(os.path.join(failed, "attempts")).read() == "xx"
    log = open(runs[1].log_file).read()
    assert log.count("--resume") == 2  # the log keeps both attempts


# ---------------------------------------------------------------- overriding a sweep: --set, -- EXTRA, --data_path

def test_set_takes_commas_and_spaces_alike():
    assert parse_set(["seed=1,2", "3", "model=er"]) == parse_set(["seed=1", "2", "3", "model=er"]) == \
        {"seed": [1, 2, 3], "model": ["er"]}
    assert parse_set(["lr=0.1,0.03", "load_best_args=true", "name=a b"]) == \
        {"lr": [0.1, 0.03], "load_best_args": [True], "name": ["a b"]}
    for tokens, message in [(["1"], "KEY=VALUE first"), (["--seed=1"], "without dashes"), (["seed="], "no value"),
                            (["results_dir=x"], "the runner sets --results_dir itself")]:
        with pytest.raises(UserError, match=message):
            parse_set(tokens)


def test_extra_flags_forms():
    assert parse_extra(["--n_epochs", "1"]) == parse_extra(["--n_epochs=1"]) == {"n_epochs": 1}
    assert parse_extra(["--debug_mode", "--lr_milestones", "10", "20", "--lr", "-0.5"]) == \
        {"debug_mode": True, "lr_milestones": "10 20", "lr": -0.5}
    for tokens, message in [(["1"], "must start with a flag"), (["--seed", "1", "--seed", "2"], "given twice"),
                            (["--results_file", "x"], "the runner sets it itself")]:
        with pytest.raises(UserError, match=message):
            parse_extra(tokens)


def test_plan_with_set_extra_flags_and_data_path(env):
    sweep = make_sweep(env, seeds=(1, 2, 3))
    base = {r.params["seed"]: r for r in plan(sweep, str(env / "R")) if r.params["method"] == "a"}
    runs = plan(sweep, str(env / "R"), overrides={"seed": [7, 8], "method": ["a"]},
                extra=["--n_epochs", "1", "--device", "cpu", "--nowand=1"], data_path="/data/here")
    assert [(r.params["method"], r.params["seed"]) for r in runs] == [("a", 7), ("a", 8)]
    first = runs[0]
    assert first.argv[-7:-1] == ["--data_path=/data/here", "--n_epochs", "1", "--device", "cpu", "--nowand=1"]
    assert first.argv[-1] == f"--results_file={first.results_file}"
    # --n_epochs changes what a run computes: it is in the name; --device, --nowand and --data_path are not
    assert os.path.basename(first.results_file) == "fail=0,method=a,n_epochs=1,seed=7,sleep=0.3.json"
    same = plan(sweep, str(env / "R"), extra=["--device", "cpu"], data_path="/elsewhere")
    assert {r.results_file for r in same} == {r.results_file for r in plan(sweep, str(env / "R"))}
    assert base[1].results_file in {r.results_file for r in same}


def test_extra_flag_naming_a_sweep_parameter_is_refused(env, capsys):
    sweep = make_sweep(env)
    assert grid_main([sweep, "--any_program", "--results_dir", str(env / "R"), "--", "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed is a parameter of" in err and "--set seed=VALUE" in err


def test_grid_runs_with_set_extra_flags_and_data_path_from_the_environment(env, capsys, monkeypatch):
    sweep = make_sweep(env, seeds=(1,), sleep=0.0)
    out = env / "R"
    monkeypatch.setenv("FNO_CL_DATA", str(env / "data-from-env"))
    assert grid_main([sweep, "--any_program", "--results_dir", str(out), "--jobs", "2", "--set", "seed=4", "5",
                      "--", "--n_epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"--data_path {env / 'data-from-env'} (from $FNO_CL_DATA)" in printed
    assert results_in(out) == [f"fail=0,method={m},n_epochs=2,seed={s},sleep=0.json" for m in "ab" for s in (4, 5)]
    for name in results_in(out):
        args = json.loads((out / name).read_text())["args"]
        assert args["n_epochs"] == 2 and args["data_path"] == str(env / "data-from-env")
    # the command's --data_path wins over the environment
    assert grid_main([sweep,
                      "--any_program", "--results_dir", str(env / "R2"), "--data_path", "/from/command", "--dry_run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2 and all("--data_path=/from/command" in c for c in commands)
