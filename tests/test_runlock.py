"""The per-run lock: a second holder is refused with one line naming the first one's pid, the lock goes
with its process however it ends (a SIGKILL leaves no state that blocks a restart), a clean exit removes it."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from utils.errors import UserError
from utils.runlock import lock_file, run_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent("""
    import sys, time
    from utils.runlock import run_lock
    with run_lock(*sys.argv[1:]):
        print("held", flush=True)
        time.sleep(60)
""")


def start_holder(*places):
    """Another process holding the lock of ``places``, returned once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, places)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "held\n", proc.stderr.read() if proc.poll() is not None else line
    return proc


def test_lock_files_sit_beside_results_and_checkpoints(tmp_path):
    assert lock_file(str(tmp_path / "r.json")) == str(tmp_path / "r.json.lock")
    assert lock_file(str(tmp_path / "ckpt") + "/") == str(tmp_path / "ckpt.lock")


def test_second_holder_in_this_process_is_refused_and_clean_exit_removes_the_lock(tmp_path):
    results = str(tmp_path / "sub" / "r.json")
    with run_lock(results, None):
        assert open(lock_file(results)).read() == f"{os.getpid()}\n"
        with pytest.raises(UserError) as caught:
            with run_lock(results):
                pytest.fail("a second holder got the lock")
        message = str(caught.value)
        assert message.startswith(f"another process (pid {os.getpid()}) is already running this run: {results}")
        assert "\n" not in message
    assert not os.path.exists(lock_file(results))
    with run_lock(results):  # free again
        pass


def test_other_process_holds_the_lock_until_it_is_killed(tmp_path):
    results, checkpoint = tmp_path / "r.json", tmp_path / "checkpoints" / "r"
    holder = start_holder(results, checkpoint)
    try:
        for place in (results, checkpoint):
            with pytest.raises(UserError, match=rf"^another process \(pid {holder.pid}\) is already running"):
                with run_lock(None, str(place)):
                    pass
        # Refused on the checkpoint: the results file's lock is not kept either.
        with pytest.raises(UserError):
            with run_lock(str(tmp_path / "other.json"), str(checkpoint)):
                pass
        assert not os.path.exists(tmp_path / "other.json.lock")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert os.path.exists(lock_file(str(results)))  # a killed holder leaves its file, which blocks nothing
    with run_lock(str(results), str(checkpoint)):
        assert open(lock_file(str(results))).read() == f"{os.getpid()}\n"
    assert not os.path.exists(lock_file(str(results))) and not os.path.exists(lock_file(str(checkpoint)))


def test_error_reaches_the_user_as_one_line(tmp_path):
    """What a program that reports UserError as one line (main.py does) prints on a locked run."""
    results = tmp_path / "r.json"
    holder = start_holder(results)
    second = ("import sys\nfrom utils.errors import UserError\nfrom utils.runlock import run_lock\n"
              "try:\n    with run_lock(sys.argv[1]): print('ran')\n"
              "except UserError as exc:\n    sys.exit(f'prog: error: {exc}')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", second, str(results)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"prog: error: another process (pid {holder.pid}) is already running this run")
