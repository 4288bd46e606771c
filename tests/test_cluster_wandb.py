"""``python -m utils.summarize --wandb ENTITY/PROJECT [--sweep ID]``: the same tables and plots from the
runs' wandb summaries as from the results files, through a fake API object with wandb.Api's methods
(``runs(path)``, ``sweep(path).runs``; each run's ``id``, ``name``, ``state`` and ``summary``)."""
import json
import os
import types

import pytest

from tests.test_summarize import cl_results, results_dir, write  # noqa: F401
from utils.summarize.command import main
from utils.wandb_logger import RESULTS_KEY


class FakeApi:
    def __init__(self, runs, sweeps=None):
        self._runs, self._sweeps, self.asked = runs, sweeps or {}, []

    def runs(self, path):
        self.asked.append(("runs", path))
        return iter(self._runs)

    def sweep(self, path):
        self.asked.append(("sweep", path))
        return types.SimpleNamespace(runs=self._sweeps[path])


def fake_run(number, text, state="finished"):
    """A run as WandbLogger.finish leaves it: the results file's text in the summary."""
    summary = {} if text is None else {RESULTS_KEY: text}
    return types.SimpleNamespace(id=f"id{number}", name=f"run-{number:03d}", state=state, summary=summary)


def runs_of(directory):
    """One fake run per *.json under ``directory``, in the order the directory reader reads them."""
    runs = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(".json"):
                with open(os.path.join(root, name)) as f:
                    runs.append(fake_run(len(runs), f.read()))
    return runs


def outputs(directory):
    return {name: open(os.path.join(directory, name)).read() for name in ("summary.csv", "summary.md")}


def test_summarize_from_wandb_equals_summarize_from_the_files(results_dir, tmp_path, capsys):
    plots = pytest.importorskip("matplotlib") and True
    runs = runs_of(results_dir)
    runs += [fake_run(900, json.dumps(cl_results("er", "fc", 40, 1.0, 1.0)), state="running"),
             fake_run(901, None)]
    assert main([str(results_dir)] + (["--plots", str(tmp_path / "p1")] if plots else [])) == 0
    from_files = capsys.readouterr().out
    out = tmp_path / "from-wandb"
    api = FakeApi(runs)
    assert main([str(out), "--wandb", "team/fno-cl"] + (["--plots", str(tmp_path / "p2")] if plots else []),
                api=api) == 0
    from_wandb = capsys.readouterr().out
    assert api.asked == [("runs", "team/fno-cl")]
    assert outputs(out) == outputs(results_dir)
    assert sorted(os.listdir(tmp_path / "p2")) == sorted(os.listdir(tmp_path / "p1"))
    tables = lambda text: [l for l in text.splitlines() if not l.startswith(("skipped", "wrote"))]
    assert tables(from_wandb) == tables(from_files) and "FNO - FC" in from_files
    assert "skipped wandb:team/fno-cl/id900: state running" in from_wandb
    assert f"skipped wandb:team/fno-cl/id901: its summary has no '{RESULTS_KEY}'" in from_wandb
    assert sum("skipped" in l for l in from_wandb.splitlines()) == sum("skipped" in l for l in from_files.splitlines()) + 2


def test_one_sweep_and_the_default_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = [fake_run(i, json.dumps(cl_results("er", head, seed, 80.0 + seed, 95.0)))
            for i, (head, seed) in enumerate([("fc", 1), ("fno", 1), ("fc", 2), ("fno", 2)])]
    api = FakeApi([], sweeps={"team/fno-cl/abc123": runs})
    assert main(["--wandb", "team/fno-cl", "--sweep", "abc123"], api=api) == 0
    assert api.asked == [("sweep", "team/fno-cl/abc123")]
    assert (tmp_path / "results" / "wandb" / "team-fno-cl-abc123" / "summary.md").exists()
    assert "FNO - FC" in capsys.readouterr().out


def test_bad_wandb_arguments_and_api_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--wandb", "no-entity"])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--sweep", "abc"])

    class Broken:
        def runs(self, path):
            raise RuntimeError("could not find project team/missing\nmore detail")
    capsys.readouterr()
    assert main(["--wandb", "team/missing", str(tmp_path)], api=Broken()) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python -m utils.summarize: error: cannot read wandb:team/missing: RuntimeError: could not find project team/missing"
