"""main.py --seeds: one stacked process writes every seed's results file, named and filled as its single run's."""
import json

import pytest

import main as main_module

FLAGS = ["--dataset", "seq-digits", "--model", "er", "--classifier", "fno", "--masked_softmax", "1",
         "--buffer_size", "200", "--load_best_args", "--n_epochs", "1", "--device", "cpu"]


def test_seeds_write_the_single_runs_files(tmp_path, capsys):
    stacked, single = tmp_path / "stacked", tmp_path / "single"
    assert main_module.main(FLAGS + ["--seeds", "1-2", "--results_dir", str(stacked)]) == 0
    for seed in (1, 2):
        assert main_module.main(FLAGS + ["--seed", str(seed), "--results_dir", str(single)]) == 0
    names = sorted(p.name for p in stacked.glob("*.json"))
    assert names == sorted(p.name for p in single.glob("*.json")) and len(names) == 2
    for name in names:
        a, b = (json.loads((folder / name).read_text()) for folder in (stacked, single))
        assert a["acc_matrix_class_il"] == b["acc_matrix_class_il"] and a["args"]["seed"] == b["args"]["seed"]


@pytest.mark.parametrize("extra, message", [
    (["--seed", "3"], "either --seed or --seeds"),
    (["--results_file", "r.json"], "{seed}"),
    (["--seeds", "3-1"], "ends before it starts"),
])
def test_bad_seed_flags_are_one_line(extra, message, capsys, tmp_path):
    flags = FLAGS + (["--seeds", "1-2"] if "--seeds" not in extra else []) + extra
    with pytest.raises(SystemExit) as exc:
        main_module.main(flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1
