import itertools

import pytest
import torch

from backbone.heads import FCHead, FNOHead, fno_matrix, make_head
from utils.errors import UserError


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k,d", [(10, 100), (10, 512), (100, 512), (200, 512), (7, 7), (3, 10)])
def test_fno_matrix_is_nonnegative_orthonormal_with_disjoint_covering_blocks(k, d):
    q = fno_matrix(k, d, gen(0)).double()
    assert q.shape == (k, d)
    assert (q >= 0).all()
    assert torch.allclose(q @ q.T, torch.eye(k, dtype=torch.float64), atol=1e-6)
    support = q > 0
    assert (support.sum(0) == 1).all(), "every dimension belongs to exactly one class"
    sizes = support.sum(1)
    assert set(sizes.tolist()) <= {d // k, -(-d // k)}
    assert sizes.sum() == d
    assert (sizes == d // k + 1).sum() == d % k
    # entries of row k are 1/sqrt(n_k) on its block
    for row, n in zip(q, sizes):
        assert torch.allclose(row[row > 0], torch.full((int(n),), float(n) ** -0.5, dtype=torch.float64))


def test_fno_matrix_is_determined_by_the_seed():
    assert torch.equal(fno_matrix(10, 100, gen(3)), fno_matrix(10, 100, gen(3)))
    assert not torch.equal(fno_matrix(10, 100, gen(3)), fno_matrix(10, 100, gen(4)))


def test_leftover_dimensions_go_to_random_classes():
    owners = set()
    for seed in range(20):
        sizes = (fno_matrix(10, 105, gen(seed)) > 0).sum(1)
        owners.add(tuple(torch.nonzero(sizes == 11).flatten().tolist()))
    assert len(owners) > 1


def test_fno_refuses_fewer_dims_than_classes():
    with pytest.raises(UserError, match="feature_dim=64 < num_classes=100"):
        fno_matrix(100, 64, gen(0))


def test_fno_head_is_fixed_with_one_learnable_scale():
    head = FNOHead(12, 4, gen(0))
    assert [n for n, _ in head.named_parameters()] == ["scale"]
    assert head.scale.item() == 1.0
    assert "weight" in dict(head.named_buffers())
    h = torch.rand(5, 12)
    assert torch.allclose(head(h), h @ head.weight.T)
    with torch.no_grad():
        head.scale.fill_(2.5)
    assert torch.allclose(head(h), 2.5 * h @ head.weight.T)
    # the scale learns; Q does not
    head(h).sum().backward()
    assert head.scale.grad is not None and head.weight.grad is None


def test_make_head_kinds():
    assert isinstance(make_head("fc", 8, 4, gen(0)), FCHead)
    assert make_head("fc", 8, 4, gen(0)).bias is not None
    assert isinstance(make_head("fno", 8, 4, gen(0)), FNOHead)
    with pytest.raises(UserError, match="valid choices: cosine, etf, fc, fno, orth, rpc"):
        make_head("lucir", 8, 4, gen(0))


def test_fno_logit_of_own_class_uses_only_its_block():
    q = fno_matrix(5, 20, gen(1))
    head = FNOHead(20, 5, gen(1))
    for k, j in itertools.product(range(5), range(5)):
        h = torch.zeros(20)
        h[q[j] > 0] = 1.0  # features living on class j's block only
        logit = head(h.unsqueeze(0))[0, k]
        assert (logit > 0) == (k == j)
