"""The fixed baselines beside FNO, against their definitions, and the head registry."""
import argparse

import pytest
import torch

from backbone.heads import (ETFHead, OrthHead, FNOHead, get_head_class, head_names, make_head,
                            random_orthogonal, simplex_etf)
from utils.errors import UserError


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_registry_lists_every_head_and_says_which_are_fixed():
    assert head_names() == ["cosine", "etf", "fc", "fno", "orth", "rpc"]
    assert [get_head_class(n).FIXED for n in head_names()] == [False, True, False, True, True, True]
    for name in head_names():
        head = make_head(name, 16, 4, gen(0))
        assert head.class_weights().shape == (4, 16)


@pytest.mark.parametrize("k, d", [(2, 2), (5, 12), (10, 64)])
def test_simplex_etf_rows_are_unit_and_equiangular(k, d):
    m = simplex_etf(k, d, gen(3)).double()
    gram = m @ m.T
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    assert torch.allclose(gram, expected, atol=1e-5)
    assert torch.allclose(m.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-5)  # centred: the prototypes sum to 0


@pytest.mark.parametrize("k, d", [(3, 3), (10, 100)])
def test_orth_rows_are_orthonormal_and_signed(k, d):
    q = random_orthogonal(k, d, gen(5))
    assert torch.allclose(q @ q.T, torch.eye(k), atol=1e-5)
    assert (q < 0).any() and (q > 0).any()
    assert torch.equal(q, random_orthogonal(k, d, gen(5))) and not torch.equal(q, random_orthogonal(k, d, gen(6)))


@pytest.mark.parametrize("cls", [ETFHead, OrthHead, FNOHead])
def test_fixed_heads_train_only_their_scale(cls):
    head = cls(12, 4, gen(0))
    assert [n for n, _ in head.named_parameters()] == ["scale"]
    h = torch.rand(3, 12)
    assert torch.allclose(head(h), h @ head.class_weights().T)
    head(h).sum().backward()
    assert head.weight.grad is None and head.scale.grad is not None


def test_fno_scale_0_has_no_learnable_parameter():
    head = FNOHead(12, 4, gen(0), argparse.Namespace(fno_scale=0))
    assert list(head.parameters()) == [] and float(head.scale) == 1.0
    assert set(head.state_dict()) == {"weight", "scale"}  # checkpoints keep one layout


@pytest.mark.parametrize("name", ["etf", "orth", "fno"])
def test_fixed_heads_refuse_fewer_dims_than_classes(name):
    with pytest.raises(UserError, match="feature_dim=3 < num_classes=4"):
        make_head(name, 3, 4, gen(0))


@pytest.mark.parametrize("classifier", ["etf", "orth"])
def test_new_heads_run_the_demo_protocol(make_args, classifier):
    from utils.training import run_experiment
    args = make_args("--dataset", "seq-digits", "--model", "er", "--classifier", classifier, "--masked_softmax", "1",
                     "--buffer_size", "200", "--load_best_args", "--n_epochs", "1")
    res = run_experiment(args, log=lambda *a: None)
    assert res["class_il"] > 30 and res["args"]["classifier"] == classifier


def test_fno_scale_flag_reaches_the_built_head(make_args):
    from utils.training import build_run
    flags = ("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--classifier", "fno")
    with_scale = build_run(make_args(*flags)).model.net.head
    without = build_run(make_args(*flags, "--fno_scale", "0")).model.net.head
    assert [n for n, _ in with_scale.named_parameters()] == ["scale"]
    assert list(without.parameters()) == [] and torch.equal(without.weight, with_scale.weight)
