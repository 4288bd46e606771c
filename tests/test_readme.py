"""Every command in the README runs as written.

The fenced ``bash`` blocks are read from README.md.  ``main.py`` commands on
the MLP benchmarks and ``main_lt.py`` commands run for real, shortened
(``--debug_mode 1``; one epoch of a tiny network for the long-tail trainer) on
small files in the real on-disk formats that replace ``--data_path``.  The
image-benchmark ``main.py`` commands are parsed and resolved exactly as
``main.py`` does (every flag, choice and best-arguments row is checked); their
code paths run in tests/test_image_datasets.py and the methods' tests.  ``python -m`` commands that need
finished runs or minutes (grid, summarize, benchmarks) are checked against
their own ``--help``: the module exists and knows every flag the README gives it.
Installation commands and ``wandb``/``torchrun``/``bash`` lines are not run here
(CI runs the install and the GPU check's smoke pass itself).
"""
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from utils.seeds import parse_seeds

from datasets.utils.cifar_io import write_cifar
from tests.conftest import write_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


COMMANDS = readme_commands()
RUN = [c for c in COMMANDS if c.startswith(("python main.py", "python main_lt.py"))]
HELP = [c for c in COMMANDS if c.startswith("python -m ")]


def test_the_readme_has_commands_to_check():
    assert len(RUN) >= 8 and len(HELP) >= 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme-data")
    write_mnist(str(root))
    rng = np.random.RandomState(0)

    def split(n_per_class, classes):
        y = np.repeat(np.arange(classes), n_per_class)
        return rng.randint(0, 256, (len(y), 3, 32, 32)).astype(np.uint8), y

    write_cifar(str(root), "cifar10", split(120, 10), split(6, 10))  # for the long-tail commands
    return str(root)


def with_flag(argv: list, flag: str, value: str) -> list:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


@pytest.mark.parametrize("command", RUN)
def test_run_commands_work_as_written(command, data_dir, tmp_path):
    argv = shlex.split(command)[1:]
    argv[0] = os.path.join(ROOT, argv[0])
    if len(argv) == 1:  # the demo, exactly as written (its results file goes under the temporary folder)
        done = subprocess.run([sys.executable] + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Final (er, fno, masked=1, seq-digits)" in done.stdout and (tmp_path / "results").is_dir()
        return
    if any(d in argv for d in ("seq-cifar10", "seq-cifar100", "seq-tinyimg")):
        from utils.args import parse_args
        parse_args(with_flag(argv[1:], "--device", "cpu"))  # a bad flag or value exits with code 2
        return
    argv = with_flag(argv, "--data_path", data_dir)
    results = tmp_path / "R"
    if "--results_dir" in argv:  # each run (each seed with --seeds) writes its own file there
        argv = with_flag(argv, "--results_dir", str(results))
    else:
        argv = with_flag(argv, "--results_file", str(results / ("r-{seed}.json" if "--seeds" in argv else "r.json")))
    argv = with_flag(argv, "--device", "cpu")
    if argv[0].endswith("main.py"):
        argv = with_flag(argv, "--debug_mode", "1")
    else:
        for flag, value in (("--n_epochs", "1"), ("--width", "4"), ("--batch_size", "32")):
            argv = with_flag(argv, flag, value)
    done = subprocess.run([sys.executable] + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    seeds = argv[argv.index("--seeds") + 1] if "--seeds" in argv else "1"
    written = sorted(results.glob("*.json"))
    assert len(written) == len(parse_seeds(seeds)), written  # one results file per seed


@pytest.mark.parametrize("command", HELP)
def test_module_commands_know_their_flags(command):
    argv = shlex.split(command)
    module = argv[2]
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    own = argv[3:argv.index("--")] if "--" in argv else argv[3:]  # flags after "--" go to every run
    for flag in (a.split("=")[0] for a in own if a.startswith("--")):
        assert flag in done.stdout, f"{command}: {module} --help does not mention {flag}"


def test_the_readme_shows_what_the_demo_prints(tmp_path, monkeypatch, capsys):
    """The sample output is the demo's own (CPU runs are deterministic): every line the README shows but
    the elided ones and the results path is printed as written."""
    import main as main_module
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    sample = text[text.index("No arguments given: running the embedded demo"):]
    sample = sample[:sample.index("```")].splitlines()
    shown = [line for line in sample if line != "..." and not line.startswith("Results written to")]
    assert any(line.startswith("Final (er, fno, masked=1, seq-digits): Class-IL") for line in shown)
    monkeypatch.chdir(tmp_path)  # the demo writes results/seq-digits/<name>.json under the current directory
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the sample is a CPU run, as a clean clone's
    assert main_module.main([]) == 0
    printed = capsys.readouterr().out.replace("\r", "\n").splitlines()
    for line in shown:
        assert line in printed, line
