"""Damaged or foreign checkpoints: ``--resume`` exits with 2 and one line naming the file, the fault and the remedy.

One real run writes a checkpoint; each test damages a copy of it, resumes
from the copy in this process, and checks the exit code, that stderr is a
single line naming the file, and that the file was left as it was.
"""
import copy
import os
import pickle

import pytest
import torch

import main
from utils.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint, restore_run

ARGV = ["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1", "--n_epochs", "1",
        "--device", "cpu", "--nowand", "1", "--results_file", "none"]
REMEDY = "delete it or use another --checkpoint_dir"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The bytes and the content of the checkpoint of a complete 5-task run."""
    directory = tmp_path_factory.mktemp("good")
    assert main.main(ARGV + ["--checkpoint_dir", str(directory)]) == 0
    path = directory / CHECKPOINT_FILE
    return path.read_bytes(), torch.load(path, weights_only=True)


def write_checkpoint(directory, content=None, data=None):
    """A checkpoint file in ``directory`` holding ``content`` (via torch.save) or the raw bytes ``data``."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    if data is None:
        torch.save(content, path)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def resume_fails(directory, capsys, *fragments):
    """Resume from ``directory``: exit code 2, one stderr line naming the file, the fragments and the remedy."""
    path = os.path.join(str(directory), CHECKPOINT_FILE)
    before = open(path, "rb").read()
    capsys.readouterr()
    assert main.main(ARGV + ["--checkpoint_dir", str(directory), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"main.py: error: checkpoint {path}: "), err
    for fragment in fragments + (REMEDY,):
        assert fragment in err, err
    assert open(path, "rb").read() == before, "the damaged checkpoint was changed"
    return err


def damaged(saved, change):
    state = copy.deepcopy(saved[1])
    return change(state) or state


def rename_head(state):
    state["model"] = {k.replace(".head.", ".classifier."): v for k, v in state["model"].items()}


def wider_head(state):
    state["model"]["net.head.weight"] = torch.zeros(12, 100)
    state["model"]["net.head.bias"] = torch.zeros(12)


def smaller_buffer(state):
    buffer = state["buffer"]
    buffer["size"] = 20
    buffer["fields"] = {k: v[:21].clone() for k, v in buffer["fields"].items()}


def set_in(*keys, value):
    """A change that sets ``state[keys[0]][keys[1]]...`` to ``value``."""
    def change(state):
        inner = state
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value
    return change


def drop(*keys):
    """A change that deletes ``state[keys[0]][keys[1]]...``."""
    def change(state):
        inner = state
        for key in keys[:-1]:
            inner = inner[key]
        del inner[keys[-1]]
    return change


CASES = {
    "missing history": (drop("history"), ["lacks 'history'"]),
    "history without stages_done": (drop("history", "stages_done"), ["stages_done"]),
    "history without rows": (drop("history", "rows_cil"), ["lacks 'rows_cil'"]),
    "absurd stages_done": (set_in("history", "stages_done", value=99),
                           ["claims 99 completed stage(s), but this run has 5"]),
    "rows fewer than stages": (set_in("history", "rows_til", value=[[100.0]]), ["rows_til is not 5 row(s)"]),
    "wrong model keys": (rename_head, ["its model is not this run's", "missing 'net.head.bias'",
                                       "unexpected 'net.classifier.bias'"]),
    "wrong model shapes": (wider_head, ["'net.head.weight' is a float32 tensor of shape (12, 100)",
                                        "this run's is a float32 tensor of shape (10, 100)"]),
    "wrong buffer size": (smaller_buffer, ["replay buffer has size 20, but --buffer_size is 50"]),
    "buffer with bad fields": (set_in("buffer", "fields", "examples", value=torch.zeros(51, 3)),
                               ["replay buffer's 'examples' is a float32 tensor of shape (51, 3)"]),
    "bad generator state": (set_in("rng", "data_order", value=torch.zeros(3, dtype=torch.uint8)),
                            ["'data_order' random generator is invalid"]),
    "bad python random state": (set_in("rng", "python", value=(3, (1, 2), None)),
                                ["'python' random generator is invalid"]),
    "bad numpy random state": (set_in("rng", "numpy", value="MT19937"), ["'numpy' random generator is invalid"]),
    "missing generator": (drop("rng", "augmentation"), ["lack 'augmentation'"]),
    "bad optimizer state": (set_in("optimizer", value={"state": {}, "param_groups": []}),
                            ["optimizer state does not fit this run"]),
    "bad logger state": (set_in("logger", value={"step": "x"}), ["logger state"]),
    "other format": (set_in("format", value=7), ["format 7 is not this program's (1)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_content_is_one_line_naming_the_file(tmp_path, saved, capsys, case):
    change, fragments = CASES[case]
    write_checkpoint(tmp_path, damaged(saved, change))
    resume_fails(tmp_path, capsys, *fragments)


def test_truncated_file(tmp_path, saved, capsys):
    write_checkpoint(tmp_path, data=saved[0][:len(saved[0]) // 2])
    resume_fails(tmp_path, capsys, "the file is truncated")


def test_empty_file(tmp_path, capsys):
    write_checkpoint(tmp_path, data=b"")
    resume_fails(tmp_path, capsys, "the file is empty")


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    write_checkpoint(tmp_path, data=b"results: 42\n")
    resume_fails(tmp_path, capsys, "not a checkpoint")


def test_checkpoint_that_is_not_a_dict(tmp_path, capsys):
    write_checkpoint(tmp_path, [1, 2, 3])
    resume_fails(tmp_path, capsys, "holds a list, not a checkpoint dictionary")


def mark_executed(path):
    with open(path, "w") as f:
        f.write("code from a checkpoint ran")


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return mark_executed, (self.marker,)


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, saved, capsys):
    marker = tmp_path / "executed"
    state = damaged(saved, set_in("logger", value={"step": 0, "run_id": RunsCodeWhenUnpickled(str(marker))}))
    write_checkpoint(tmp_path / "ck", state)
    resume_fails(tmp_path / "ck", capsys, "objects other than tensors and plain containers")
    assert not marker.exists()
    # The legacy (non-zip) pickle format is refused before it is read at all.
    write_checkpoint(tmp_path / "legacy", data=pickle.dumps(RunsCodeWhenUnpickled(str(marker))))
    resume_fails(tmp_path / "legacy", capsys, "not a checkpoint")
    assert not marker.exists()


def test_damaged_checkpoint_is_reported_without_resume_too(tmp_path, capsys):
    write_checkpoint(tmp_path, data=b"")
    capsys.readouterr()
    assert main.main(ARGV + ["--checkpoint_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the file is empty" in err and REMEDY in err


def test_restore_checks_everything_before_changing_the_run(tmp_path, saved):
    """The generator states are checked last: a bad one must leave model, buffer and generators as they were."""
    from utils.args import parse_args
    from utils.training import build_run
    write_checkpoint(tmp_path, damaged(saved, set_in("rng", "buffer", value=torch.zeros(3, dtype=torch.uint8))))
    args = parse_args(ARGV + ["--checkpoint_dir", str(tmp_path), "--resume"])
    run = build_run(args)
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    data_order = run.data_generator.get_state()
    state = load_checkpoint(args)
    with pytest.raises(CheckpointError, match="'buffer' random generator is invalid"):
        restore_run(run, state)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert run.model.buffer.num_seen == 0 and run.model.opt is None
    assert torch.equal(run.data_generator.get_state(), data_order)
