import os
import re
import subprocess
import sys

import pytest

from utils.args import DEFAULT_ARGV, build_parser, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_of(capsys, *flags):
    with pytest.raises(SystemExit) as exc:
        parse_args(list(flags) + ["--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.count("\n") == 1, f"error must be one line, got: {err!r}"
    return err


@pytest.mark.parametrize("flags,expected", [
    (["--dataset", "seq-nope", "--model", "er"], "invalid choice: 'seq-nope'"),
    (["--dataset", "seq-digits", "--model", "nope"], "invalid choice: 'nope'"),
    (["--dataset", "seq-digits", "--model", "er", "--classifier", "lucir"], "invalid choice: 'lucir'"),
    (["--dataset", "seq-digits", "--model", "er", "--lr", "0.1"], "--buffer_size > 0"),
    (["--dataset", "seq-digits", "--model", "er", "--lr", "0.1", "--buffer_size", "-3"], "non-negative"),
    (["--dataset", "seq-digits", "--model", "er", "--buffer_size", "10"], "needs --lr"),
    (["--dataset", "seq-digits", "--model", "derpp", "--buffer_size", "10", "--lr", "0.1"], "needs --alpha, --beta"),
    (["--dataset", "seq-digits", "--model", "er", "--buffer_size", "123", "--load_best_args"],
     "no best arguments for buffer size 123"),
    (["--dataset", "perm-mnist", "--model", "er", "--buffer_size", "200", "--load_best_args"],
     "no best arguments for model 'er' on perm-mnist"),
    (["--dataset", "seq-digits", "--model", "orthermr", "--buffer_size", "10", "--lr", "1", "--classifier", "fc"],
     "implies --classifier fno"),
    (["--dataset", "seq-digits", "--model", "sgd", "--lr", "-1"], "positive"),
    (["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--masked_softmax", "2"],
     "expected one of 0, 1, batch, seen"),
    (["--model", "sgd", "--lr", "0.1"], "--dataset is required"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(capsys, flags, expected):
    assert expected in error_of(capsys, *flags)


def test_unavailable_cuda_is_refused(capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--device", "cuda"])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_best_args_fill_and_explicit_flags_win(make_args):
    a = make_args("--dataset", "seq-mnist", "--model", "derpp", "--buffer_size", "500", "--load_best_args")
    assert (a.lr, a.minibatch_size, a.alpha, a.beta) == (0.03, 10, 1.0, 0.5)
    assert (a.n_epochs, a.batch_size, a.backbone) == (1, 10, "mlp")
    a = make_args("--dataset", "seq-mnist", "--model", "derpp", "--buffer_size", "500", "--load_best_args",
                  "--lr", "0.5", "--beta", "0")
    assert (a.lr, a.alpha, a.beta) == (0.5, 1.0, 0.0)


def test_a_flag_two_methods_declare_takes_the_chosen_methods_default(make_args, capsys):
    """--gamma: oEWC's required decay, X-DER's 0.85 by default; whichever method is chosen, its own declaration
    decides (not the first method that declares the name)."""
    base = ("--dataset", "seq-digits", "--lr", "0.1")
    xder = make_args(*base, "--model", "xder", "--buffer_size", "50", "--alpha", "0.1", "--beta", "0.5")
    assert xder.gamma == 0.85
    assert make_args(*base, "--model", "xder", "--buffer_size", "50", "--alpha", "0.1", "--beta", "0.5",
                     "--gamma", "0.5").gamma == 0.5
    with pytest.raises(SystemExit):
        make_args(*base, "--model", "ewc_on", "--e_lambda", "1")
    assert "--gamma" in capsys.readouterr().err


def test_best_args_cover_every_benchmark_of_the_paper_table(make_args):
    from models import get_model_class
    BEST_ARGS = {d: {m: get_model_class(m).BEST_ARGS[d] for m in ("er", "derpp")}
                 for d in ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")}
    for dataset in ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg"):
        for model in ("er", "derpp"):
            assert set(BEST_ARGS[dataset][model]) == {200, 500, 5120}
    assert BEST_ARGS["seq-tinyimg"]["er"][500]["lr"] == 0.03
    assert BEST_ARGS["seq-cifar10"]["derpp"][5120] == {"lr": 0.03, "minibatch_size": 32, "alpha": 0.1, "beta": 1.0}


@pytest.mark.parametrize("alias,classifier,masked,base", [
    ("ermr", "fc", 1, "er"), ("orthermr", "fno", 1, "er"), ("orther", "fno", 0, "er"),
    ("derppmr", "fc", 1, "derpp"), ("orthderppmr", "fno", 1, "derpp"), ("orthderpp", "fno", 0, "derpp"),
])
def test_author_aliases(make_args, alias, classifier, masked, base):
    a = make_args("--dataset", "seq-mnist", "--model", alias, "--buffer_size", "200", "--load_best_args")
    assert (a.model, a.classifier, a.masked_softmax, a.model_name) == (base, classifier, masked, alias)


def test_minibatch_defaults_to_batch_size(make_args):
    a = make_args("--dataset", "seq-digits", "--model", "er", "--buffer_size", "20", "--lr", "0.1",
                  "--batch_size", "7")
    assert a.minibatch_size == 7


def test_help_lists_the_choices():
    text = build_parser().format_help()
    for name in ("seq-digits", "seq-mnist", "er", "derpp", "der", "sgd", "joint", "orthermr", "fno", "mlp"):
        assert name in text


def test_help_shows_the_values_of_every_flag():
    parser = build_parser()
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        assert action.metavar or action.choices, f"{action.option_strings[0]} shows no values in --help"
        assert action.metavar != action.dest.upper()
    usage = " ".join(parser.format_usage().split())
    assert "--masked_softmax {0,1,batch,seen}" in usage and "--nowand {0,1}" in usage and "--alpha FLOAT" in usage
    assert not re.search(r"--(\w+) \1", usage.lower().replace("_", "")), usage  # argparse's default: the name


def test_help_says_the_default_head_differs_from_the_demo():
    text = " ".join(build_parser().format_help().split())
    assert "--classifier fc --masked_softmax 0" in text and "--classifier fno --masked_softmax 1" in text


def test_default_command_is_masked_fno_er_on_digits(make_args):
    a = make_args(*DEFAULT_ARGV)
    assert (a.dataset, a.model, a.classifier, a.masked_softmax) == ("seq-digits", "er", "fno", 1)


def test_main_exits_2_on_missing_data_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--dataset", "seq-mnist", "--model",
                           "sgd", "--lr", "0.1", "--device", "cpu", "--data_path", str(tmp_path),
                           "--results_file", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte" in lines[0] and str(tmp_path) in lines[0]
    assert not (tmp_path / "r.json").exists()
