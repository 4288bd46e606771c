"""The grid checks before it launches: every pending run parsed as main.py parses it, one line per distinct
refusal with its count, nothing launched (or the rest with --skip_invalid); per_model values in sweep files."""
import os

import pytest
import yaml

from models import MODELS, get_model_class, model_names
from utils.errors import UserError
from utils.grid.cli import main as grid_main
from utils.grid.sweep import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def weighted(monkeypatch):
    """A method with no best arguments (like the README's er-weighted), registered for this test only."""
    model_names()
    cls = type("WeightedER", (get_model_class("er"),), {"BEST_ARGS": {}})
    monkeypatch.setitem(MODELS, "er-weighted", cls)
    monkeypatch.chdir(ROOT)  # the sweep's program, main.py, is found from the repository root
    return cls


def write_sweep(tmp_path, models, per_model=None):
    sweep = {"program": "main.py", "method": "grid",
             "parameters": {"dataset": {"value": "seq-digits"}, "model": {"values": models},
                            "classifier": {"values": ["fc", "fno", "etf"]}, "buffer_size": {"value": 200},
                            "load_best_args": {"value": True}, "seed": {"values": [1, 2, 3, 4, 5]},
                            "device": {"value": "cpu"}}}
    if per_model:
        sweep["per_model"] = per_model
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_a_method_without_best_arguments_launches_nothing(weighted, tmp_path, capsys):
    sweep = write_sweep(tmp_path, ["er", "er-weighted"])
    out = tmp_path / "R"
    assert grid_main([sweep, "--results_dir", str(out), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("15 of 30 runs refused (e.g. classifier=fc model=er-weighted seed=1): ")
    assert "no best arguments for model 'er-weighted'" in err[0]
    assert err[1] == "nothing launched: fix the sweep, or give --skip_invalid to run the other 15"
    assert not out.exists()
    # --skip_invalid: the 15 er runs go ahead
    assert grid_main([sweep, "--results_dir", str(out), "--dry_run", "--skip_invalid"]) == 0
    captured = capsys.readouterr()
    commands = captured.out.strip().splitlines()
    assert "running the other 15 runs (--skip_invalid)" in captured.err
    assert len(commands) > 0 and not any("er-weighted" in c for c in commands)


def test_per_model_values_make_every_run_valid(weighted, tmp_path, capsys):
    per_model = {"er-weighted": {"load_best_args": {"value": False}, "lr": {"values": [0.1, 0.03]}}}
    sweep = write_sweep(tmp_path, ["er", "er-weighted"], per_model)
    runs = plan(sweep, str(tmp_path / "R"))
    assert len(runs) == 15 + 30  # er: 3 heads x 5 seeds; er-weighted also x 2 learning rates
    er = [r for r in runs if r.params["model"] == "er"]
    assert all("lr" not in r.params and r.params["load_best_args"] is True for r in er)
    assert {r.params["lr"] for r in runs if r.params["model"] == "er-weighted"} == {0.1, 0.03}
    assert grid_main([sweep, "--results_dir", str(tmp_path / "R"), "--dry_run", "--pack_seeds", "1"]) == 0
    captured = capsys.readouterr()
    assert "refused" not in captured.err and len(captured.out.strip().splitlines()) == 45


@pytest.mark.parametrize("per_model,message", [
    ({"der": {"lr": {"value": 0.1}}}, "per_model 'der' is not one of the sweep's model values (er, er-weighted)"),
    ({"er": {"model": {"value": "der"}}}, "per_model 'er' may not set model"),
    ({"er": {"lr": 0.1}}, "parameter 'lr' needs 'value' or a non-empty list 'values'"),
])
def test_bad_per_model_blocks(weighted, tmp_path, per_model, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(write_sweep(tmp_path, ["er", "er-weighted"], per_model), str(tmp_path / "R"))
