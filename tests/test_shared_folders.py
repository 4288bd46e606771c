"""Results folders shared by colleagues and runners: nothing is written through a link or into a FIFO or device
planted there, a sweep file runs only this repository's programs unless the user says otherwise, abbreviated
flags never reach another flag, and a few hundred bytes of sweep file cannot hang the planner."""
import os
import stat

import pytest
import yaml

import main as main_module
import main_lt
from utils.errors import UserError
from utils.grid.cli import main as grid_main
from utils.grid.processes import open_log
from utils.grid.runs import GridRun
from utils.grid.sweep import MAX_RUNS, load_sweep, plan, untrusted
from utils.io import atomic_write_bytes, check_writable_file, discards, open_created
from utils.runlock import lock_file, run_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--n_epochs", "1", "--device", "cpu"]


def one_line(text: str, *words: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def planted_link(tmp_path, at):
    """A link at ``at`` to a victim file outside the folder; returns the victim."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, at)
    return victim


# ---- writes outside the chosen files ----

def test_a_link_planted_at_a_run_lock_is_refused_and_its_target_untouched(tmp_path):
    results = tmp_path / "shared" / "r.json"
    results.parent.mkdir()
    victim = planted_link(tmp_path, lock_file(str(results)))
    with pytest.raises(UserError, match="symbolic link") as caught:
        with run_lock(str(results)):
            pytest.fail("the lock was taken through a link")
    one_line(str(caught.value), lock_file(str(results)))
    assert victim.read_text() == "precious\n" and os.path.islink(lock_file(str(results)))


def test_a_fifo_at_a_lock_file_is_refused_without_blocking(tmp_path):
    checkpoint = tmp_path / "ckpt"
    os.mkfifo(lock_file(str(checkpoint)))
    with pytest.raises(UserError, match="not a regular file"):
        with run_lock(str(checkpoint)):
            pass


def test_a_lock_name_too_long_for_the_file_system_is_one_line(tmp_path):
    with pytest.raises(UserError, match="too long"):
        with run_lock(str(tmp_path / ("c" * 252))):
            pass


def test_grid_logs_are_never_written_through_a_planted_link(tmp_path):
    (tmp_path / "logs").mkdir()
    victim = planted_link(tmp_path, tmp_path / "logs" / "a.log")
    run = GridRun({"seed": 1}, "a", str(tmp_path / "a.json"), str(tmp_path / "logs" / "a.log"), ["true"], None,
                  ["true"], "main.py")
    with pytest.raises(UserError, match="symbolic link"):
        open_log(run)
    assert victim.read_text() == "precious\n"


def test_created_files_are_truncated_only_when_regular_and_appended_when_asked(tmp_path):
    path = tmp_path / "log"
    path.write_text("old\n")
    with open_created(str(path), append=True) as f:
        f.write("more\n")
    assert path.read_text() == "old\nmore\n"
    with open_created(str(path)) as f:
        f.write("new\n")
    assert path.read_text() == "new\n"


def test_a_fifo_or_device_as_results_file_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file") as caught:
        check_writable_file(str(fifo), "--results_file")
    one_line(str(caught.value), "--results_file", os.devnull)
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_bytes(str(fifo), b"{}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dev_null_as_results_file_writes_nothing_and_takes_no_lock(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert discards(os.devnull)  # else (as root) the write below would replace the device with a file
    atomic_write_bytes(os.devnull, b"discarded")  # no temporary file in /dev, no rename over the device
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert main_module.main(DIGITS + ["--results_file", os.devnull]) == 0
    out, err = capsys.readouterr()
    assert "Results discarded" in out and not os.path.exists(os.devnull + ".lock")


def test_a_results_name_whose_temporary_file_is_too_long_fails_before_training(tmp_path):
    name = "r" * 245 + ".json"  # 250 characters: the file fits, its temporary file (+14) does not
    with pytest.raises(UserError, match="temporary file"):
        check_writable_file(str(tmp_path / name), "--results_file")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module,flags", [(main_module, DIGITS), (main_lt, ["--dataset", "cifar10-lt", "--method", "ce",
                                                                               "--device", "cpu"])])
def test_abbreviated_flags_are_refused_not_completed(capsys, tmp_path, module, flags):
    with pytest.raises(SystemExit) as exc:
        module.main(flags + ["--checkpoint_d", str(tmp_path / "elsewhere")])
    assert exc.value.code == 2
    one_line(capsys.readouterr().err, "--checkpoint_d")
    assert not (tmp_path / "elsewhere").exists()


def write_sweep(folder, **top):
    parameters = {"dataset": {"value": "seq-digits"}, "model": {"value": "sgd"}, "lr": {"value": 0.1},
                  "seed": {"values": [1, 2]}}  # a valid main.py run (the grid parses every run before it starts)
    sweep = {"program": "main.py", "method": "grid", "parameters": parameters, **top}
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_sweep_keys_that_abbreviate_runner_flags_are_refused(tmp_path):
    sweep = write_sweep(tmp_path, parameters={"checkpoint_d": {"value": "/elsewhere"}, "seed": {"value": 1}})
    with pytest.raises(UserError, match="abbreviates a runner flag.*--checkpoint_dir"):
        plan(sweep, str(tmp_path / "R"))


@pytest.mark.parametrize("top,why,dry_run_code", [
    ({"program": "/bin/sh"}, "outside the repository", 0),
    # main.py would refuse the words this command puts before the flags: the dry run says so, exit code 2
    ({"command": ["/bin/sh", "-c", "touch pwned", "${args}"]}, "its command runs '/bin/sh'", 2),
    ({"command": ["${env}", "bash", "${program}", "${args}"]}, "its command runs 'bash'", 0),
])
def test_a_sweep_that_runs_another_program_needs_consent(capsys, tmp_path, monkeypatch, top, why, dry_run_code):
    monkeypatch.chdir(ROOT)
    sweep = write_sweep(tmp_path, **top)
    said = untrusted(sweep)
    assert why in said
    assert grid_main([sweep, "--results_dir", str(tmp_path / "R")]) == 2
    one_line(capsys.readouterr().err, why, "--any_program", "--dry_run")
    assert not (tmp_path / "R").exists() and not (tmp_path / "pwned").exists()
    assert grid_main([sweep, "--results_dir", str(tmp_path / "R"), "--dry_run"]) == dry_run_code  # shows what would run
    assert said.split("'")[1] in capsys.readouterr().out


def test_the_repository_sweeps_need_no_consent():
    for name in sorted(os.listdir(os.path.join(ROOT, "sweeps"))):
        assert untrusted(os.path.join(ROOT, "sweeps", name)) is None, name


# ---- hangs and memory from tiny inputs ----

def test_yaml_aliases_are_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    path.write_text("\n".join(lines) + "\nprogram: main.py\nparameters: {seed: {values: *a11}}\n")
    assert path.stat().st_size < 700
    with pytest.raises(UserError, match=r"aliases \(\*name\) are not allowed .*line 2"):
        load_sweep(str(path))


def test_values_that_are_not_scalars_are_refused(tmp_path):
    sweep = write_sweep(tmp_path, parameters={"lr": {"values": [[0.1, 0.2], 0.3]}})
    with pytest.raises(UserError, match="parameter 'lr' has a value that is not a number"):
        plan(sweep, str(tmp_path / "R"))


def test_a_grid_is_counted_before_it_is_expanded(tmp_path):
    parameters = {f"p{i}": {"values": list(range(10))} for i in range(10)}  # 10^10 combinations
    sweep = write_sweep(tmp_path, parameters=parameters)
    with pytest.raises(UserError, match=f"10000000000 combinations, more than the {MAX_RUNS}"):
        plan(sweep, str(tmp_path / "R"))


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("program: main.py\nparameters:\n  lr: {value: 0.1}\n  lr: {value: 0.2}\n")
    with pytest.raises(UserError, match="duplicate key 'lr' .line 4."):
        load_sweep(str(path))


def test_a_sweep_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"program: main.py\nparameters: {seed: {value: \xff}}\n")
    with pytest.raises(UserError, match="not UTF-8 text .byte 0xff at offset 44."):
        load_sweep(str(path))


def test_a_results_dir_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocker = tmp_path / "R"
    blocker.write_text("x")
    assert grid_main([write_sweep(tmp_path), "--results_dir", str(blocker)]) == 2
    one_line(capsys.readouterr().err, "is a file")


@pytest.mark.parametrize("flags", [["--claim_timeout", "nan"], ["--claim_timeout", "-5"], ["--slurm_time", "-1"]])
def test_grid_timeouts_must_be_positive(capsys, tmp_path, flags):
    with pytest.raises(SystemExit) as exc:
        grid_main([write_sweep(tmp_path), "--results_dir", str(tmp_path / "R"), *flags])
    assert exc.value.code == 2
    one_line(capsys.readouterr().err, flags[0])


# ---- silent outputs ----

@pytest.mark.parametrize("flag", ["--results_file", "--checkpoint_dir"])
def test_empty_output_paths_are_refused(capsys, flag):
    with pytest.raises(SystemExit):
        main_module.main(DIGITS + [flag, ""])
    one_line(capsys.readouterr().err, f"{flag} is empty")


def test_long_tail_results_file_none_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = main_lt.parse_args(["--dataset", "cifar10-lt", "--method", "ce", "--device", "cpu",
                               "--results_file", "none"])
    assert args.results_file is None


def test_a_link_planted_at_a_claim_is_never_written_or_touched_through(tmp_path):
    from utils.grid.claims import claim_path, read_claim, try_claim
    results = str(tmp_path / "r.json")
    victim = planted_link(tmp_path, claim_path(results))
    os.utime(victim, (1, 1))
    assert read_claim(claim_path(results)) == {}  # not followed
    claim = try_claim(results, timeout_s=1.0)  # the "claim" looks stale: it is moved aside, a real one made
    assert claim is not None and not os.path.islink(claim_path(results))
    claim.heartbeat()
    claim.release()
    assert victim.read_text() == "precious\n" and os.stat(victim).st_mtime == 1


def test_a_checkpoint_folder_whose_lock_name_is_too_long_is_one_line_and_removed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / ("c" * 252)
    assert main_module.main(DIGITS + ["--checkpoint_dir", str(folder), "--results_file", "none"]) == 2
    one_line(capsys.readouterr().err, "too long")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_file_larger_than_a_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("program: main.py\nparameters: {seed: {value: 1}}\n#" + "x" * (1 << 20) + "\n")
    with pytest.raises(UserError, match="larger than 1048576 bytes"):
        load_sweep(str(path))


def test_a_full_disk_under_the_grid_is_one_line(capsys, tmp_path, monkeypatch):
    import errno

    from utils.grid import processes

    def full(path, append=False):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(processes, "open_created", full)
    assert grid_main([write_sweep(tmp_path), "--results_dir", str(tmp_path / "R"), "--pack_seeds", "1"]) == 2
    one_line(capsys.readouterr().err, "No space left on device", str(tmp_path / "R" / "logs"))
