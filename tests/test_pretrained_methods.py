"""SimpleCIL, RanPAC and SLCA against their definitions, the frozen-feature cache, and every method end to end
on each 224-pixel benchmark (a micro ViT, --debug_mode 1, folders in the published layouts)."""
import json

import pytest
import torch
import torch.nn.functional as F

import main
from backbone.feature_cache import FeatureCache
from models.ranpac import RIDGES, choose_ridge, ridge_solve
from tests.fake_pretrained_data import write_cifar100, write_cub, write_imagenet_r
from utils.training import build_run, stages, train_stage


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pretrained-data"))
    write_imagenet_r(root, per_class=2)
    write_cub(root)
    write_cifar100(root, train_per_class=2)
    return root


def micro_run(make_args, root, model, *flags, dataset="seq-cifar100-224"):
    args = make_args("--dataset", dataset, "--model", model, "--backbone", "vit-micro", "--data_path", root,
                     "--results_file", "none", *flags)
    return build_run(args)


def features_of(run, data):
    with torch.no_grad():
        return run.model.net.backbone(run.transform.test(data.x))


def test_simplecil_prototypes_are_class_means_scored_by_cosine(make_args, data_root):
    run = micro_run(make_args, data_root, "simplecil")
    data = stages(run)[0]
    train_stage(run, data)
    model, h = run.model, features_of(run, data)
    for c in torch.unique(data.y).tolist():
        torch.testing.assert_close(model.prototypes[c], h[data.y == c].mean(0), atol=1e-5, rtol=1e-5)
    assert model.prototypes[10:].abs().sum() == 0                     # task 2's classes: not seen yet
    x = run.transform.test(run.test.x[:4])
    expected = F.normalize(model.backbone(x), dim=1) @ F.normalize(model.prototypes[:10], dim=1).T
    logits = model(x)
    torch.testing.assert_close(logits[:, :10], expected, atol=1e-5, rtol=1e-5)
    assert (logits[:, 10:] < -1e8).all()                              # unseen classes are never predicted


def test_simplecil_with_fno_keeps_prototypes_in_the_heads_partition(make_args, data_root):
    run = micro_run(make_args, data_root, "simplecil", "--classifier", "fno", "--feature_activation", "relu",
                    "--projection_dim", "100")
    data = stages(run)[0]
    train_stage(run, data)
    q = run.model.head.class_weights()                                # the FNO matrix, K x D
    h = features_of(run, data)
    assert (h >= 0).all()
    for c in torch.unique(data.y).tolist():
        torch.testing.assert_close(run.model.prototypes[c], (h[data.y == c] @ q.T).mean(0), atol=1e-5, rtol=1e-5)


def test_ranpac_ridge_is_the_direct_solve_over_all_tasks_seen(make_args, data_root):
    run = micro_run(make_args, data_root, "ranpac", "--rp_dim", "300")
    model, zs, ys = run.model, [], []
    for data in stages(run)[:2]:
        train_stage(run, data)
        zs.append(torch.relu(features_of(run, data) @ model.projection).double())
        ys.append(F.one_hot(data.y, 100).double())
    z, y = torch.cat(zs), torch.cat(ys)
    assert model.ridge in RIDGES
    direct = torch.linalg.inv(z.T @ z + model.ridge * torch.eye(300, dtype=torch.float64)) @ (z.T @ y)
    torch.testing.assert_close(model.weight.double(), direct, atol=1e-5, rtol=1e-4)
    x = run.transform.test(run.test.x[:3])
    torch.testing.assert_close(model(x)[:, :20], (torch.relu(model.backbone(x) @ model.projection) @ model.weight)[:, :20])


def test_ranpac_chooses_the_ridge_with_the_lowest_held_out_error():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(60, 8, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.arange(60) % 3, 3).double()
    chosen = choose_ridge(z, y, torch.Generator().manual_seed(5))
    order = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    fit, held = order[:48], order[48:]
    errors = [((z[held] @ ridge_solve(z[fit].T @ z[fit], z[fit].T @ y[fit], r) - y[held]) ** 2).mean() for r in RIDGES]
    assert chosen == RIDGES[int(torch.stack(errors).argmin())]


def test_ranpac_refuses_a_head_it_would_not_use(make_args):
    with pytest.raises(SystemExit):
        make_args("--dataset", "seq-cub200", "--model", "ranpac", "--backbone", "vit-micro", "--classifier", "fno")


def test_slca_stores_class_statistics_and_aligns_from_them(make_args, data_root):
    run = micro_run(make_args, data_root, "slca", "--lr", "0.01", "--max_steps_per_task", "1", "--batch_size", "8",
                    "--ca_epochs", "1", "--ca_samples", "16")
    data = stages(run)[0]
    train_stage(run, data)
    model, h = run.model, features_of(run, data)
    c = int(data.y[0])
    torch.testing.assert_close(model.means[c], h[data.y == c].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.covariances[c], torch.cov(h[data.y == c].T), atol=1e-5, rtol=1e-4)
    assert model.seen.sum() == 10
    # sampling draws from the stored Gaussians: set known statistics and check the sample moments
    model.means.zero_()
    model.means[3, 0] = 5.0
    model.covariances.copy_(torch.eye(64).expand_as(model.covariances) * 4.0)
    feats, labels = model.sample_features(4000)
    assert feats.shape == (10 * 4000, 64) and torch.equal(torch.unique(labels), torch.nonzero(model.seen).flatten())
    of3 = feats[labels == 3]
    assert abs(float(of3[:, 0].mean()) - 5.0) < 0.15 and abs(float(of3[:, 1:].var(0).mean()) - 4.0) < 0.2


def test_slca_optimizer_gives_the_backbone_the_slow_rate(make_args, data_root):
    run = micro_run(make_args, data_root, "slca", "--lr", "0.02", "--backbone_lr_scale", "0.1")
    run.model.prepare_task(0)
    rates = [group["lr"] for group in run.model.opt.param_groups]
    assert rates == pytest.approx([0.002, 0.02])


def test_cached_features_equal_a_direct_forward(make_args, data_root):
    run = micro_run(make_args, data_root, "simplecil")
    backbone = run.model.backbone
    cache = FeatureCache(backbone)
    x = run.transform.test(run.test.x[:12])
    with torch.no_grad():
        direct = backbone(x)
        first = cache(x[:8])
        both = cache(x)                                   # 8 hits, 4 misses
    assert cache.computed == 12
    torch.testing.assert_close(first, direct[:8], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both, direct, atol=1e-6, rtol=1e-5)
    assert torch.equal(both[:8], first)                   # hits return the stored features themselves


def test_the_cache_changes_no_result_and_saves_forward_passes(make_args, data_root):
    results = {}
    for on in ("1", "0"):
        run = micro_run(make_args, data_root, "simplecil", "--feature_cache", on, "--n_tasks", "3")
        from utils.training import evaluate
        for data in stages(run)[:3]:
            train_stage(run, data)
            evaluate(run, data.task + 1)
        results[on] = (run.model.prototypes.clone(), evaluate(run, 3))
        if on == "1":
            assert run.model.cache.computed == len(run.train.y[run.train.task < 3]) + len(run.test.y[run.test.task < 3])
    torch.testing.assert_close(results["1"][0], results["0"][0], atol=1e-5, rtol=1e-5)
    assert results["1"][1] == results["0"][1]


@pytest.mark.parametrize("dataset", ["seq-imagenet-r", "seq-cub200", "seq-cifar100-224"])
@pytest.mark.parametrize("model, flags", [
    ("simplecil", ["--classifier", "fno", "--feature_activation", "relu", "--projection_dim", "200",
                   "--class_order", "7"]),
    ("ranpac", ["--rp_dim", "200"]),
    ("slca", ["--classifier", "fno", "--feature_activation", "relu", "--projection_dim", "200", "--lr", "0.01",
              "--batch_size", "4", "--ca_samples", "8"]),
])
def test_every_method_runs_on_every_benchmark(data_root, dataset, model, flags, tmp_path):
    out = tmp_path / "r.json"
    assert main.main(["--dataset", dataset, "--model", model, "--backbone", "vit-micro", "--debug_mode", "1",
                      "--n_tasks", "2", "--data_path", data_root, "--device", "cpu", "--results_file", str(out),
                      "--nowand", "1", *flags]) == 0
    results = json.loads(out.read_text())
    assert len(results["acc_matrix_class_il"]) == 2 and results["partial"]          # --n_tasks 2
    assert (results["class_order"] is not None) == ("--class_order" in flags)


def test_first_session_adaptation_trains_ssf_on_task_1_only_then_freezes(make_args, data_root):
    run = micro_run(make_args, data_root, "simplecil", "--first_session_adapt", "1", "--adapt_lr", "0.1",
                    "--batch_size", "8", "--max_steps_per_task", "3")
    model = run.model
    x = run.transform.test(run.test.x[:4])
    plain = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = model.features(x)
    unadapted = micro_run(make_args, data_root, "simplecil")            # the same seed: the same backbone
    torch.testing.assert_close(before, unadapted.model.features(x))      # SSF starts as the identity
    first, second = stages(run)[:2]
    assert model.trains_on(0) and not model.trains_on(1)
    train_stage(run, first)
    after = model.features(x)
    assert not torch.allclose(after, before)                           # adapted (and the cache was emptied)
    assert all(torch.equal(plain[k], v) for k, v in model.backbone.state_dict().items())  # backbone untouched
    ssf = [p.clone() for p in model.ssf.parameters()]
    train_stage(run, second)
    assert all(torch.equal(a, b) for a, b in zip(ssf, model.ssf.parameters()))            # frozen after task 1
    torch.testing.assert_close(model.features(x), after)


def test_slca_alignment_trains_the_head_alone_on_normalised_logits(make_args, data_root):
    run = micro_run(make_args, data_root, "slca", "--lr", "0.01", "--max_steps_per_task", "1", "--batch_size", "8",
                    "--ca_epochs", "1", "--ca_samples", "16")
    model = run.model
    first, second = stages(run)[:2]
    train_stage(run, first)
    # after the first task: statistics stored, no alignment (the authors align from the second task on)
    model.prepare_task(1)
    backbone = {k: v.clone() for k, v in model.network.backbone.state_dict().items()}
    head = [p.clone() for p in model.network.head.parameters()]
    model.store_statistics(second)
    model.align_classifier()
    assert all(torch.equal(v, model.network.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not all(torch.equal(a, b) for a, b in zip(head, model.network.head.parameters()))
    # the normalised logits: seen classes only, divided by the mean per-task norm and the temperature
    logits = torch.randn(3, 100)
    tasks_norm = torch.stack([logits[:, :10].norm(dim=1), logits[:, 10:20].norm(dim=1)], 1) + 1e-7
    expected = logits[:, :20] / tasks_norm.mean(1, keepdim=True) / 0.1
    torch.testing.assert_close(model.aligned_logits(logits), expected)


def test_vit_throughput_script_runs(capsys):
    from benchmarks import vit_throughput
    vit_throughput.main(["--device", "cpu", "--backbone", "vit-micro", "--batch_size", "2", "--steps", "1",
                         "--warmup", "0"])
    line = capsys.readouterr().out
    assert "training" in line and "feature extraction" in line and "images/s" in line
