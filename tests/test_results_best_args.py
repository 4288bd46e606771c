"""--load_best_args for sgd, joint and der: the published values (Mammoth's best_args.py, which the authors'
fork keeps; joint takes sgd's entry, as Mammoth's main.py does), each table in its method's file with its
source named, and what the parser resolves from them."""
import inspect

import pytest

from models import get_model_class

PAPER_BENCHMARKS = ("seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")
# Mammoth's utils/best_args.py ('sgd' at buffer -1; 'der'), as published
SGD_LR = {"seq-mnist": 0.03, "seq-cifar10": 0.1, "seq-cifar100": 0.03, "seq-tinyimg": 0.03}
DER = {("seq-mnist", 200): (0.03, 10, 0.2), ("seq-mnist", 500): (0.03, 128, 1.0), ("seq-mnist", 5120): (0.1, 128, 0.5),
       ("seq-cifar10", 200): (0.03, 32, 0.3), ("seq-cifar10", 500): (0.03, 32, 0.3),
       ("seq-cifar10", 5120): (0.03, 32, 0.3), ("seq-tinyimg", 200): (0.03, 32, 0.1),
       ("seq-tinyimg", 500): (0.03, 32, 0.1), ("seq-tinyimg", 5120): (0.03, 32, 0.1),
       ("seq-cifar100", 500): (0.03, 32, 0.3), ("seq-cifar100", 2000): (0.03, 32, 0.3)}


@pytest.mark.parametrize("model", ["sgd", "joint"])
def test_bufferless_methods_have_the_published_learning_rates(model):
    table = get_model_class(model).BEST_ARGS
    assert set(table) == set(PAPER_BENCHMARKS) | {"seq-digits"}
    assert all(list(sizes) == [0] for sizes in table.values())          # buffer size 0: no buffer
    assert {d: table[d][0] for d in PAPER_BENCHMARKS} == {d: {"lr": lr} for d, lr in SGD_LR.items()}
    assert table == get_model_class("sgd").BEST_ARGS                      # Mammoth runs joint with sgd's entry


def test_der_has_the_published_table_and_a_digits_row():
    table = get_model_class("der").BEST_ARGS
    got = {(d, b): (v["lr"], v["minibatch_size"], v["alpha"]) for d, sizes in table.items() for b, v in sizes.items()
           if d != "seq-digits"}
    assert got == DER
    assert set(table["seq-digits"]) == {50, 200, 500}
    assert table is not get_model_class("derpp").BEST_ARGS


@pytest.mark.parametrize("model", ["sgd", "joint", "der"])
def test_tables_hold_only_flags_the_method_takes_and_name_their_source(model):
    cls = get_model_class(model)
    allowed = {"lr", "minibatch_size"} | set(cls.FLAGS)
    assert all(set(flags) <= allowed for sizes in cls.BEST_ARGS.values() for flags in sizes.values())
    source = inspect.getsource(cls)
    assert "aimagelab/mammoth" in source and "khyong/FNO-classifier" in source


@pytest.mark.parametrize("flags,expected", [
    (["--model", "sgd", "--dataset", "seq-mnist"], {"lr": 0.03}),
    (["--model", "joint", "--dataset", "seq-cifar10"], {"lr": 0.1}),
    (["--model", "sgd", "--dataset", "seq-digits"], {"lr": 0.1}),
    (["--model", "der", "--dataset", "seq-mnist", "--buffer_size", "500"], {"lr": 0.03, "minibatch_size": 128,
                                                                           "alpha": 1.0, "beta": None}),
    (["--model", "der", "--dataset", "seq-digits", "--buffer_size", "50"], {"lr": 0.03, "alpha": 0.2}),
])
def test_load_best_args_resolves_them(make_args, flags, expected):
    args = make_args(*flags, "--load_best_args")
    assert {k: getattr(args, k) for k in expected} == expected


def test_explicit_flags_still_win(make_args):
    args = make_args("--model", "der", "--dataset", "seq-cifar10", "--buffer_size", "200", "--load_best_args",
                     "--alpha", "0.7")
    assert (args.alpha, args.lr) == (0.7, 0.03)
