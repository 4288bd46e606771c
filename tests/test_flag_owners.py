"""Flags are owned: a method, its head and its backbone meet in one run, so a flag two of them declare must agree
(else start-up refuses in one line naming both); methods are alternatives, so each run parses a flag they
declare differently with its own method's type and default; --load_best_args never sets a head's flag."""
import pytest
from torch import nn

from backbone.heads import HEADS, head_names
from models import get_model_class, model_names
from utils.args import FlagConflict, build_parser, flag_owners, parse_args
from utils.cli import Flag, bounded, positive

BASE = ["--dataset", "seq-digits", "--device", "cpu", "--results_file", "none"]


def head_with(flags):
    class GammaHead(nn.Module):
        FIXED = False
        FLAGS = flags
    return GammaHead


@pytest.fixture
def register(monkeypatch):
    head_names()  # the registry is filled before the test adds to it

    def add(name, flags):
        monkeypatch.setitem(HEADS, name, head_with(flags))
    return add


def test_a_head_declaring_a_methods_flag_differently_is_refused_at_start_up(register, capsys):
    register("gammahead", {"gamma": Flag(positive(float), 2.0, "focusing exponent")})
    with pytest.raises(FlagConflict):
        flag_owners()
    with pytest.raises(SystemExit) as exit_info:
        parse_args(BASE + ["--model", "ewc_on", "--load_best_args", "--classifier", "gammahead"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--gamma is declared differently by method ewc_on" in err and "head gammahead" in err


def test_a_flag_shared_in_the_same_sense_is_one_flag(register):
    same = Flag(bounded(float, 0, 1), None, "decay of the running Fisher, in [0, 1]", required=True)  # a new closure
    register("gammahead", {"gamma": same})
    assert "gammahead" in flag_owners()["gamma"][1]
    args = parse_args(BASE + ["--model", "ewc_on", "--load_best_args", "--classifier", "gammahead"])
    assert args.gamma == 1.0  # the method's own flag, which the head shares: set by the method's table


def test_load_best_args_never_sets_a_heads_flag(monkeypatch, capsys):
    table = {"seq-digits": {0: dict(lr=0.1, fno_scale=0.0)}}  # fno_scale is the fno head's
    monkeypatch.setattr(get_model_class("sgd"), "BEST_ARGS", table)
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--model", "sgd", "--classifier", "fno", "--load_best_args"])
    assert "the table of sgd sets --fno_scale (a flag of fno)" in capsys.readouterr().err


def test_every_best_args_row_sets_only_its_methods_flags_and_shared_ones():
    owners = flag_owners()
    for name in model_names():
        cls = get_model_class(name)
        for rows in cls.BEST_ARGS.values():
            for row in rows.values():
                assert all(k not in owners or k in cls.FLAGS for k in row), (name, row)


def test_methods_declaring_one_flag_differently_each_parse_their_own(capsys):
    # ewc_on: gamma required, in [0, 1]; xder: gamma default 0.85. Each run gets its own method's.
    assert parse_args(BASE + ["--model", "xder", "--buffer_size", "50", "--lr", "0.1", "--alpha", "0.3", "--beta", "0.8"]).gamma == 0.85
    assert parse_args(BASE + ["--model", "ewc_on", "--lr", "0.1", "--e_lambda", "1", "--gamma", "0.5"]).gamma == 0.5
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--model", "ewc_on", "--lr", "0.1", "--e_lambda", "1", "--gamma", "1.5"])
    assert "argument --gamma: expected at most 1" in capsys.readouterr().err
    help_text = build_parser().format_help()
    assert "ewc_on: decay of the running Fisher" in help_text and "(default 0.85)" in help_text
