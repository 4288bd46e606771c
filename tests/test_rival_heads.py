"""The cosine and Regular Polytope heads (backbone/rival_heads.py) against their definitions, with the
collapse diagnostics, and with every method on seq-digits and on MNIST-format files."""
import argparse
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import main as main_module
from backbone.heads import get_head_class, make_head
from backbone.rival_heads import CosineHead, RPCHead, cube_vertices, orthoplex_vertices, simplex_vertices
from models import get_model_class, model_names
from utils.collapse import collapse_metrics
from utils.training import build_run, run_experiment


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ns(**flags):
    return argparse.Namespace(**flags)


# ----------------------------------------------------------------------------- cosine

def test_cosine_logits_are_scaled_cosines_without_bias():
    torch.manual_seed(0)
    head = CosineHead(12, 5)
    assert [n for n, _ in head.named_parameters()] == ["weight"] and not get_head_class("cosine").FIXED
    h = torch.rand(7, 12)
    w = head.weight.detach()
    cos = torch.stack([torch.stack([torch.dot(x, r) / (x.norm() * r.norm()) for r in w]) for x in h])
    assert torch.allclose(head(h), 10.0 * cos, atol=1e-6)
    assert torch.allclose(head(3.0 * h), head(h), atol=1e-6), "features are L2-normalised"
    with torch.no_grad():
        head.weight.mul_(torch.arange(1.0, 6.0).unsqueeze(1))
    assert torch.allclose(head(h), 10.0 * cos, atol=1e-6), "class weights are L2-normalised"
    assert torch.allclose(head.class_weights().norm(dim=1), torch.ones(5))
    assert head(h).abs().max() <= 10.0 + 1e-5


def test_cosine_scale_is_fixed_by_default_and_learnable_by_flag():
    fixed = CosineHead(8, 3, args=ns(cosine_scale=10.0, cosine_learn_scale=0))
    learned = CosineHead(8, 3, args=ns(cosine_scale=1.0, cosine_learn_scale=1))
    assert [n for n, _ in learned.named_parameters()] == ["weight", "scale"] and float(learned.scale.detach()) == 1.0
    assert set(fixed.state_dict()) == set(learned.state_dict()) == {"weight", "scale"}
    h = torch.rand(4, 8)
    learned(h).logsumexp(1).sum().backward()
    fixed(h).logsumexp(1).sum().backward()
    assert learned.scale.grad is not None and fixed.weight.grad is not None and float(fixed.scale) == 10.0


# ----------------------------------------------------------------------------- rpc

@pytest.mark.parametrize("k", [2, 3, 10, 100])
def test_simplex_vertices_are_unit_equiangular_and_centred_in_k_minus_1_dims(k):
    v = simplex_vertices(k).double()
    assert v.shape == (k, k - 1)
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64).fill_diagonal_(1.0)
    assert torch.allclose(v @ v.T, expected, atol=1e-6)
    assert torch.allclose(v.sum(0), torch.zeros(k - 1, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("k", [2, 5, 10, 16])
def test_cube_vertices_are_distinct_corners_of_the_unit_d_cube(k):
    v = cube_vertices(k)
    d = math.ceil(math.log2(k))
    assert v.shape == (k, d)
    assert torch.allclose(v.abs(), torch.full_like(v, 1 / math.sqrt(d)))
    assert len({tuple(row.tolist()) for row in v}) == k
    gram = v @ v.T  # cosines 1 - 2 * (differing coordinates) / d
    assert torch.allclose(gram.diagonal(), torch.ones(k))
    assert all(any(math.isclose(float(g), 1 - 2 * j / d, abs_tol=1e-6) for j in range(d + 1)) for g in gram.flatten())


@pytest.mark.parametrize("k", [2, 7, 10])
def test_orthoplex_vertices_are_signed_basis_vectors(k):
    v = orthoplex_vertices(k)
    assert v.shape == (k, math.ceil(k / 2))
    gram = v @ v.T
    for i, j in itertools.product(range(k), repeat=2):
        want = 1.0 if i == j else (-1.0 if i // 2 == j // 2 else 0.0)  # antipodal pairs, else orthogonal
        assert float(gram[i, j]) == want


@pytest.mark.parametrize("polytope", ["simplex", "cube", "orthoplex"])
def test_rpc_head_trains_its_projection_and_never_its_vertices(polytope):
    torch.manual_seed(0)
    head = RPCHead(12, 10, gen(), ns(rpc_polytope=polytope))
    assert head.FIXED and [n for n, _ in head.named_parameters()] == ["projection.weight", "projection.bias"]
    vertices = head.weight.clone()
    h = torch.rand(6, 12)
    assert torch.allclose(head(h), head.projection(h) @ vertices.T, atol=1e-6)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    before = head.projection.weight.detach().clone()
    F.cross_entropy(head(h), torch.arange(6)).backward()
    opt.step()
    assert torch.equal(head.weight, vertices) and not torch.equal(head.projection.weight, before)
    assert torch.allclose(head.class_weights(), vertices @ head.projection.weight.detach())
    assert torch.allclose(vertices.norm(dim=1), torch.ones(10))


def test_rpc_vertices_need_no_random_draw():
    a, b = (RPCHead(8, 10, gen(s), ns(rpc_polytope="simplex")) for s in (0, 1))
    assert torch.equal(a.weight, b.weight)


# ----------------------------------------------------------------------------- diagnostics, flags, runs

@pytest.mark.parametrize("name", ["cosine", "rpc"])
def test_collapse_metrics_take_the_heads_class_weights(name):
    torch.manual_seed(0)
    head = make_head(name, 16, 4, gen())
    assert head.class_weights().shape == (4, 16)
    features, labels = torch.rand(40, 16), torch.arange(40) % 4
    metrics = collapse_metrics(features, labels, head.class_weights())
    assert all(math.isfinite(v) for v in metrics.values()) and "separation" not in metrics


def test_head_flags_reach_the_built_head_and_bad_values_are_one_line(make_args, capsys):
    flags = ("--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1")
    cosine = build_run(make_args(*flags, "--classifier", "cosine", "--cosine_learn_scale", "1")).model.net.head
    assert isinstance(cosine.scale, torch.nn.Parameter) and float(cosine.scale.detach()) == 10.0
    rpc = build_run(make_args(*flags, "--classifier", "rpc", "--rpc_polytope", "orthoplex")).model.net.head
    assert rpc.weight.shape == (10, 5)
    with pytest.raises(SystemExit) as exit_:
        main_module.main([*flags, "--classifier", "rpc", "--rpc_polytope", "square", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "simplex, cube, orthoplex" in err and "'square'" in err


def method_flags(method, dataset, data_path=None):
    """The method's seq-digits preset, given explicitly (so it also runs on seq-mnist)."""
    cls = get_model_class(method)
    buffer = 50 if cls.USES_BUFFER else 0
    preset = dict(cls.BEST_ARGS["seq-digits"][buffer])
    if method == "gdumb":
        preset["fitting_epochs"] = 2
    flags = ["--model", method, "--dataset", dataset, "--buffer_size", str(buffer), "--debug_mode", "1",
             "--nowand", "1", "--collapse_metrics", "1"]
    flags += [str(v) for k, v in preset.items() for v in (f"--{k}", v)]
    return flags + (["--data_path", data_path] if data_path else [])


@pytest.mark.parametrize("head", ["cosine", "rpc"])
def test_every_method_runs_with_the_head_on_digits_and_mnist_files(make_args, mnist_dir, head):
    # RanPAC's ridge classifier replaces the head; the prompt methods need a ViT (tests/test_prompt_methods.py)
    methods = [m for m in model_names() if m != "ranpac" and "seq-digits" in get_model_class(m).BEST_ARGS]
    assert len(methods) >= 12
    for method, dataset in itertools.product(methods, ("seq-digits", "seq-mnist")):
        args = make_args(*method_flags(method, dataset, mnist_dir if dataset == "seq-mnist" else None),
                         "--classifier", head)
        res = run_experiment(args, log=lambda *a: None)
        rows = 1 if get_model_class(method).JOINT else 5  # joint trains once, on every task
        assert len(res["acc_matrix_class_il"]) == rows, (method, dataset)
        assert all(0 <= a <= 100 for a in res["acc_matrix_task_il"][-1]), (method, dataset)
        assert len(res["collapse"]) == rows and all(math.isfinite(m["nc1"]) for m in res["collapse"])
