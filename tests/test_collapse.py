"""Neural-collapse metrics against their definitions: ideal values on exactly collapsed features,
not reached by random ones, invariances, the per-task hook of a run, and the comparison CLI."""
import json
import math
import os
import sys

import pytest
import torch

from backbone.heads import FCHead, fno_matrix
from utils import collapse
from utils.collapse import collapse_metrics, is_fno_weight
from utils.summarize import collapse as compare

F64 = torch.float64
SCALE_FREE = [m for m in collapse.METRICS if not m.startswith("margin_")]


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def repeat_means(means, counts):
    """Features equal to their class mean (exact collapse), ``counts[k]`` samples of class k."""
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return means[labels].clone(), labels


def etf_setup(k=5, d=12, global_norm=3.0):
    """A simplex ETF (unit-norm centred means) around a global mean orthogonal to it, of norm
    ``global_norm``; unequal class sizes; classifier rows = 2.5 x the centred means."""
    basis, _ = torch.linalg.qr(torch.randn(d, k + 1, generator=generator(1), dtype=F64))
    etf = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=F64) - 1.0 / k)   # K x K, rows sum to 0
    centred = etf @ basis[:, :k].T                                         # K x D, unit rows
    means = centred + global_norm * basis[:, k]
    features, labels = repeat_means(means, [3, 4, 5, 6, 7][:k])
    return features, labels, 2.5 * centred


def znc_setup(k_total=6, k_seen=4, d=20, c=4.0):
    """Features of the first ``k_seen`` classes equal to c q_k, with Q an FNO matrix over all classes."""
    blocks = fno_matrix(k_total, d, generator(2)) > 0
    q = blocks.to(F64) / blocks.sum(1, keepdim=True).to(F64).sqrt()     # float64 rows, exactly unit norm
    features, labels = repeat_means(c * q[:k_seen], [2, 3, 4, 5][:k_seen])
    return features, labels, q


def random_setup(n=400, d=20, k=4):
    g = generator(3)
    features = torch.randn(n, d, generator=g, dtype=F64).abs()   # non-negative, like post-ReLU features
    labels = torch.randint(0, k, (n,), generator=g)
    return features, labels, fno_matrix(k, d, generator(4)).to(F64)


def test_simplex_etf_around_nonzero_mean_gives_ordinary_nc_ideal():
    features, labels, weight = etf_setup(k=5, global_norm=3.0)
    m = collapse_metrics(features, labels, weight)
    for key in ("nc1", "nc2_global_equinorm", "nc2_global_cos_dev", "nc2_global_cos_dev_max", "nc3_global"):
        assert m[key] == pytest.approx(0.0, abs=1e-9), key
    # from the origin the means are equal-norm but far from orthogonal: cos = (g^2 - 1/(K-1)) / (g^2 + 1)
    assert m["nc2_origin_equinorm"] == pytest.approx(0.0, abs=1e-9)
    assert m["nc2_origin_cos"] == pytest.approx((9.0 - 0.25) / 10.0, rel=1e-9)
    assert m["nc3_origin"] > 0.5
    assert "separation" not in m   # the rows have negative entries: not an FNO head
    assert m["support_overlap"] > 0.5


def test_orthogonal_nonnegative_means_on_fno_blocks_give_znc_ideal():
    features, labels, q = znc_setup(c=4.0)
    m = collapse_metrics(features, labels, q)
    for key in ("nc1", "nc2_origin_equinorm", "nc2_origin_cos", "nc2_origin_cos_max", "nc3_origin",
                "margin_own_std", "margin_other_mean", "margin_other_std", "support_overlap"):
        assert m[key] == pytest.approx(0.0, abs=1e-9), key
    assert m["margin_own_mean"] == pytest.approx(4.0)
    assert m["separation"] == pytest.approx(1.0)
    # orthonormal means minus their mean form a simplex ETF: ZNC implies the ordinary NC2 ideal
    assert m["nc2_global_cos_dev_max"] == pytest.approx(0.0, abs=1e-9)
    assert m["nc2_global_equinorm"] == pytest.approx(0.0, abs=1e-9)
    assert m["nc3_global"] > 0.3   # but the classifier rows are the uncentred q_k


def test_within_block_noise_keeps_separation_but_not_nc1():
    features, labels, q = znc_setup()
    noise = torch.rand(features.shape, generator=generator(5), dtype=F64) * (q[labels] > 0)
    m = collapse_metrics(features + noise, labels, q)
    assert m["separation"] == pytest.approx(1.0)
    assert m["support_overlap"] == 0.0
    assert m["nc1"] > 1e-3 and m["margin_own_std"] > 1e-3


def test_random_features_reach_no_ideal():
    m = collapse_metrics(*random_setup())
    assert m["nc1"] > 1.0
    assert m["nc2_global_cos_dev"] > 0.05 and m["nc2_global_equinorm"] > 0.05
    assert m["nc2_origin_cos"] > 0.5
    assert m["nc3_global"] > 0.5 and m["nc3_origin"] > 0.5
    assert m["margin_other_mean"] > 0.5 * m["margin_own_mean"]
    assert m["separation"] < 0.5
    assert m["support_overlap"] > 0.5


def test_nc1_matches_the_dense_definition():
    g = generator(6)
    features = torch.randn(60, 7, generator=g, dtype=F64)
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor([5, 10, 15, 30]))  # unbalanced
    _, means, index = collapse.class_means(features, labels)
    within = features - means[index]
    s_w = within.T @ within / 60
    centred = means - means.mean(0)              # the class-balanced global mean
    s_b = centred.T @ centred / 4
    expected = torch.trace(s_w @ torch.linalg.pinv(s_b, hermitian=True)) / 4
    assert collapse.nc1(features, means, index) == pytest.approx(float(expected), rel=1e-8)


def test_hand_computed_support_overlap_separation_and_margin():
    means = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0], [3, 0, 0, 0.1]], dtype=F64)
    # 90% supports: {0,1}, {1,2}, {0}; Jaccard 1/3, 1/2, 0
    assert collapse.support_overlap(means) == pytest.approx((1 / 3 + 1 / 2) / 3)
    q = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]], dtype=F64) / math.sqrt(2)
    features = torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 2]], dtype=F64)
    labels = torch.tensor([0, 1])
    m = collapse_metrics(features, labels, q)
    assert m["separation"] == pytest.approx((2 / 3 + 1) / 2)
    # responses: sample 0 -> (2, 1)/sqrt2, sample 1 -> (0, 2)/sqrt2
    s = math.sqrt(2)
    assert m["margin_own_mean"] == pytest.approx((2 / s + 2 / s) / 2)
    assert m["margin_other_mean"] == pytest.approx((1 / s + 0) / 2)
    assert m["margin_other_std"] == pytest.approx(0.5 / s)


@pytest.mark.parametrize("setup", [random_setup, znc_setup, etf_setup])
def test_invariant_to_permuting_classes_and_samples(setup):
    features, labels, weight = setup()
    k = len(weight)
    perm = torch.randperm(k, generator=generator(7))                 # class c becomes perm[c]
    permuted_weight = torch.empty_like(weight)
    permuted_weight[perm] = weight
    order = torch.randperm(len(labels), generator=generator(8))
    before = collapse_metrics(features, labels, weight)
    after = collapse_metrics(features[order], perm[labels][order], permuted_weight)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("setup", [random_setup, znc_setup])
def test_feature_scaling_changes_only_the_margins(setup):
    features, labels, weight = setup()
    before = collapse_metrics(features, labels, weight)
    after = collapse_metrics(3.7 * features, labels, 0.2 * weight)
    for key in before:
        factor = 3.7 * 0.2 if key.startswith("margin_") else 1.0
        assert after[key] == pytest.approx(factor * before[key], rel=1e-9, abs=1e-12), key


def test_fno_detection_and_flag():
    q = fno_matrix(10, 100, generator(9))
    assert is_fno_weight(q)
    assert not is_fno_weight(FCHead(100, 10).weight.detach())
    assert not is_fno_weight(q.abs() + 0.01)            # non-negative but overlapping supports
    features, labels, _ = random_setup(d=100, k=10)
    assert "separation" not in collapse_metrics(features, labels, q, fno=False)
    with pytest.raises(ValueError, match="disjoint"):
        collapse_metrics(features, labels, -q, fno=True)
    with pytest.raises(ValueError, match="at least 2 classes"):
        collapse_metrics(features, torch.zeros(len(labels), dtype=torch.long), q)
    with pytest.raises(ValueError, match="0..9"):
        collapse_metrics(features, labels + 5, q)


def test_dead_features_give_finite_numbers():
    features, labels, q = random_setup()
    features[labels == 0] = 0.0                         # a class whose features are all zero
    m = collapse_metrics(features, labels, q)
    assert all(math.isfinite(v) for v in m.values())


def digits_args(classifier, extra=()):
    from utils.args import parse_args
    return parse_args(["--dataset", "seq-digits", "--model", "er", "--buffer_size", "50", "--lr", "0.1",
                       "--classifier", classifier, "--masked_softmax", "1", "--n_epochs", "1",
                       "--device", "cpu", "--nowand", "1", *extra])


def test_task_metrics_use_eval_mode_test_transform_and_seen_tasks_only():
    from utils.training import build_run
    run = build_run(digits_args("fno"))
    net = run.model.net
    net.backbone.layers.append(torch.nn.Dropout(0.9))    # eval mode must switch this off
    run.model.train()
    got = collapse.task_collapse_metrics(run, 2)
    assert run.model.training                            # the mode is restored
    seen = run.task_of_class[run.train.y] < 2
    net.eval()
    with torch.no_grad():
        features = net.backbone(run.dataset.TRANSFORM.test(run.train.x[seen]))
    expected = collapse_metrics(features, run.train.y[seen], net.head.weight)
    assert got.pop("tasks_seen") == 2
    assert got == pytest.approx(expected, rel=1e-6)


def test_run_experiment_stores_one_entry_per_task(tmp_path):
    from utils.training import run_experiment
    # large batches: few steps, the metrics are what is tested here
    results = run_experiment(digits_args("fno", ["--collapse_metrics", "1", "--batch_size", "100"]),
                             log=lambda *_: None)
    rows = results["collapse"]
    assert [r["tasks_seen"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(set(collapse.METRICS) <= r.keys() for r in rows)
    json.dumps(results, allow_nan=False)                 # JSON-serialisable, finite


def write_results(path, classifier, rows):
    path.write_text(json.dumps({"args": {"model_name": "er", "classifier": classifier, "masked_softmax": 1},
                                "class_il": 90.0, "collapse": rows}))
    return str(path)


def fake_rows(offset, fno):
    rows = []
    for t in (1, 2, 3):
        row = {"tasks_seen": t, **{m: offset + 0.1 * t for m in collapse.METRICS}}
        if not fno:
            del row["separation"]
        rows.append(row)
    return rows


def two_runs(tmp_path):
    return (write_results(tmp_path / "fno.json", "fno", fake_rows(1.0, fno=True)),
            write_results(tmp_path / "fc.json", "fc", fake_rows(2.0, fno=False)))


def test_cli_table_and_errors(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    assert compare.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "fno.json (er/fno+mask)" in out and "fc.json (er/fc+mask)" in out
    line = next(l for l in out.splitlines() if l.startswith("nc1 "))
    assert line.split()[1:] == ["1.3000", "2.3000"]       # the last task's values, run by run
    sep = next(l for l in out.splitlines() if l.startswith("separation"))
    assert sep.split()[1:] == ["1.3000", "-"]

    missing = str(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"class_il": 1.0, "collapse": None}))
    for bad in (missing, str(broken), str(plain)):
        assert compare.main([a, bad]) == 2
        err = capsys.readouterr().err.strip()
        assert bad in err and "\n" not in err


def test_cli_plots_one_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a, b = two_runs(tmp_path)
    out_dir = tmp_path / "plots"
    assert compare.main([a, b, "--plots", str(out_dir)]) == 0
    assert "nc1 " in capsys.readouterr().out
    assert os.listdir(out_dir) == ["collapse.png"]
    assert (out_dir / "collapse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collapse_figure_panels_shared_axes_and_ideal_lines(tmp_path):
    """One panel per metric; both runs on the same axes; the ideal value drawn as a line and inside the
    y-range, which starts at 0 rather than zooming in on the runs (the values here are 1.1..2.3)."""
    pytest.importorskip("matplotlib")
    runs = [compare.load_run(path) for path in two_runs(tmp_path)]
    fig = compare.collapse_figure(runs)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(collapse.METRICS)
    assert set(compare.IDEAL) == set(collapse.METRICS)
    for ax in panels:
        metric = ax.get_title()
        lines = {line.get_label(): line for line in ax.get_lines()}
        run_lines = [label for label in lines if label != "ideal"]
        expected_runs = 1 if metric == "separation" else 2   # the FC run has no separation
        assert len(run_lines) == expected_runs, metric
        assert "fno.json (er/fno+mask)" in run_lines
        low, high = ax.get_ylim()
        assert low <= 0.0, metric
        ideal = compare.IDEAL[metric]
        if ideal is None:
            assert "ideal" not in lines
        else:
            assert set(lines["ideal"].get_ydata()) == {ideal}, metric
            assert low <= ideal <= high
        assert high >= max(max(line.get_ydata()) for label, line in lines.items() if label != "ideal")
    first = panels[0].get_lines()[0]
    assert list(first.get_xdata()) == [1, 2, 3]
    assert all(ax.get_shared_x_axes().joined(panels[0], ax) for ax in panels)


def test_cli_plots_without_matplotlib_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    a, b = two_runs(tmp_path)
    assert compare.main([a, b, "--plots", str(tmp_path / "plots")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("python -m utils.summarize.collapse: error: --plots needs matplotlib")
    assert not (tmp_path / "plots").exists()
