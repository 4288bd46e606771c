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


def test_named_checkpoint_dir_is_each_seeds_single_run_folder(tmp_path, capsys):
    """``--checkpoint_dir D/{name}`` (as sweep files give it): the run's results name, so each seed of
    ``--seeds`` checkpoints where its single run ``--seed s`` would, and resumes it."""
    from utils.args import parse_args
    from utils.seeds import seed_args
    folder = str(tmp_path / "checkpoints" / "{name}")
    stacked = parse_args(FLAGS + ["--seeds", "1-2", "--results_dir", str(tmp_path), "--checkpoint_dir", folder,
                                  "--resume=True"])
    for seed in (1, 2):
        single = parse_args(FLAGS + ["--seed", str(seed), "--results_dir", str(tmp_path), "--checkpoint_dir", folder,
                                     "--resume=True"])
        name = single.results_file[len(str(tmp_path)) + 1:-len(".json")]
        assert single.checkpoint_dir == str(tmp_path / "checkpoints" / name) and single.resume is True
        assert seed_args(stacked, seed).checkpoint_dir == single.checkpoint_dir
    # A name shortened with a hash differs per seed in a way no {seed} template reproduces: one line.
    long = ["--lr", "0.1", "--minibatch_size", "10", "--validation", "10", "--class_order", "3", "--n_tasks", "3",
            "--max_steps_per_task", "5"]
    with pytest.raises(SystemExit) as exc:
        parse_args(FLAGS + long + ["--seeds", "1-2", "--results_file", "r{seed}.json", "--checkpoint_dir", folder])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "{name}" in err and "hash" in err
