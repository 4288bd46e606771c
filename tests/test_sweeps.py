"""Every sweep file parses, covers its grid, and every command it generates is accepted by its program's parser.

Commands are checked in both forms: the one a wandb agent builds (``${args}``,
with the sweep's ``results_dir``, ``checkpoint_dir`` and ``resume``) and the one
the local grid runner builds (its own ``--results_file``, ``--checkpoint_dir``
and ``--resume`` in their place).  A sweep whose dataset or program is not in
this checkout is skipped with the reason.
"""
import glob
import importlib.util
import os

import pytest

from datasets import dataset_names
from utils.grid.sweep import DEFAULT_COMMAND, RUNNER_FLAGS, expand, load_sweep, plan, render_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.yaml")))
PAPER_BENCHMARKS = ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")


def program_parser(program: str):
    """The ``parse_args`` of a sweep's program (main.py re-exports the one of utils.args)."""
    path = os.path.join(ROOT, program)
    if not os.path.exists(path):
        pytest.skip(f"{program} is not in this checkout yet")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(program))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "parse_args"):
        pytest.skip(f"{program} exposes no parse_args to check the commands against")
    return module.parse_args


def parse_or_fail(parse_args, argv, capsys):
    try:
        return parse_args(argv)
    except SystemExit:
        pytest.fail(f"parser rejected {' '.join(argv)}: {capsys.readouterr().err.strip()}")


def test_sweep_files_exist_for_every_benchmark():
    names = {os.path.basename(p)[:-5] for p in SWEEPS}
    assert {"seq-digits", *PAPER_BENCHMARKS} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: os.path.basename(p))
def test_every_generated_command_is_accepted(path, tmp_path, capsys, monkeypatch):
    sweep = load_sweep(path)
    combos = expand(sweep, path)
    parse_args = program_parser(sweep["program"])
    if sweep["program"] == "main.py":
        datasets = {c["dataset"] for c in combos}
        missing = datasets - set(dataset_names())
        if missing:
            pytest.skip(f"dataset(s) {', '.join(sorted(missing))} not registered in this checkout yet")
    monkeypatch.chdir(ROOT)
    runs = plan(path, str(tmp_path), checkpoints=True)
    assert len(runs) == len(combos) and len({r.results_file for r in runs}) == len(runs)
    agent_checkpoints = set()
    for params, run in zip(combos, runs):
        agent_argv = render_command(sweep.get("command") or DEFAULT_COMMAND, "PROGRAM", params)
        agent_args = parse_or_fail(parse_args, agent_argv[agent_argv.index("PROGRAM") + 1:], capsys)
        grid_argv = run.argv[run.argv.index(sweep["program"]) + 1:]
        grid_args = parse_or_fail(parse_args, grid_argv, capsys)
        for key, value in params.items():
            if key not in RUNNER_FLAGS and not isinstance(value, bool):
                assert getattr(grid_args, key) == value, (key, grid_argv)
        # The runner's own places replace the sweep's: its results file and per-run checkpoint folder.
        assert grid_args.results_file == run.results_file
        assert grid_args.checkpoint_dir == run.checkpoint_dir and grid_args.resume is True
        assert run.checkpoint_dir == os.path.join(str(tmp_path), "checkpoints", results_name_of(run.results_file))
        # An agent's run and the grid runner's run of the same parameters write the same file name, and the
        # agent's run resumes its own checkpoint folder, named from that results name.
        name = results_name_of(agent_args.results_file)
        assert name == results_name_of(run.results_file)
        assert agent_args.resume is True
        assert agent_args.checkpoint_dir == os.path.join(params["results_dir"], "checkpoints", name)
        agent_checkpoints.add(agent_args.checkpoint_dir)
    assert len(agent_checkpoints) == len(runs)  # one folder per run: no two runs resume each other's


def results_name_of(results_file: str) -> str:
    return os.path.basename(results_file)[:-len(".json")]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: os.path.basename(p))
def test_agent_runs_checkpoint_per_run_and_resume(path):
    """Every sweep gives its agents' runs a checkpoint folder per run, under its results folder, and
    --resume (a wandb agent renders it --resume=True), so a preempted and requeued run continues."""
    parameters = load_sweep(path)["parameters"]
    results_dir = parameters["results_dir"]["value"]
    assert parameters["checkpoint_dir"] == {"value": f"{results_dir}/checkpoints/{{name}}"}
    assert parameters["resume"] == {"value": True}
    assert render_command(["${args}"], "p", {"resume": True}) == ["--resume=True"]


@pytest.mark.parametrize("benchmark", PAPER_BENCHMARKS)
def test_paper_sweeps_cover_the_papers_grid(benchmark):
    sweep = load_sweep(os.path.join(ROOT, "sweeps", f"{benchmark}.yaml"))
    combos = expand(sweep)
    assert sweep["program"] == "main.py" and sweep["method"] == "grid"
    assert sweep["command"] == ["${env}", "${interpreter}", "${program}", "${args}"]
    assert {(c["model"], c["classifier"], c["buffer_size"], c["seed"]) for c in combos} == {
        (m, h, b, s) for m in ("er", "derpp") for h in ("fc", "fno") for b in (200, 500, 5120) for s in range(1, 11)}
    assert all(c["masked_softmax"] == 1 and c["load_best_args"] is True and c["dataset"] == benchmark
               for c in combos)


def test_digits_sweep_is_small():
    combos = expand(load_sweep(os.path.join(ROOT, "sweeps", "seq-digits.yaml")))
    assert {c["dataset"] for c in combos} == {"seq-digits"} and len(combos) <= 24
    assert {(c["model"], c["classifier"]) for c in combos} == {(m, h) for m in ("er", "derpp") for h in ("fc", "fno")}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: os.path.basename(p))
def test_grid_overrides_reach_the_program(path, tmp_path, capsys, monkeypatch):
    """The runner's --data_path and extra flags (``-- --n_epochs 1``) are accepted by every sweep's program;
    the extra flag is in the results name, the data path is not."""
    sweep = load_sweep(path)
    parse_args = program_parser(sweep["program"])
    if sweep["program"] == "main.py" and not {c["dataset"] for c in expand(sweep, path)} <= set(dataset_names()):
        pytest.skip("dataset not registered in this checkout yet")
    monkeypatch.chdir(ROOT)
    runs = plan(path, str(tmp_path), overrides={"seed": [9]}, extra=["--n_epochs", "1"], data_path="/mnt/data")
    for run in runs[:4]:
        args = parse_or_fail(parse_args, run.argv[run.argv.index(sweep["program"]) + 1:], capsys)
        assert args.n_epochs == 1 and args.data_path == "/mnt/data" and args.seed == 9
        name = os.path.basename(run.results_file)
        assert ",n_epochs=1," in name and "data_path" not in name and "mnt" not in name
