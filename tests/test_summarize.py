"""The summary on hand-made results files: means, stds, paired deltas by value; the t distribution
against closed forms and printed tables; bad files reported by name; CSV, Markdown and PNGs written."""
import json
import math
import os
import sys

import pandas as pd
import pytest

from utils.summarize import betainc, main, paired_comparison, t_cdf, t_quantile, t_two_sided_p


# ---------------------------------------------------------------- the t distribution

@pytest.mark.parametrize("df,expected", [  # two-sided 95% critical values from a printed t table
    (1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622), (10, 2.2281),
    (20, 2.0860), (30, 2.0423), (120, 1.9799)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-5)


def test_t_quantile_other_levels_and_large_df():
    assert t_quantile(0.995, 4) == pytest.approx(4.6041, abs=5e-5)
    assert t_quantile(0.95, 7) == pytest.approx(1.8946, abs=5e-5)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=5e-5)  # tends to the normal quantile
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("t", [-30.0, -4.0, -1.3, -0.2, 0.0, 0.5, 1.0, 2.7, 9.0, 150.0])
def test_t_cdf_matches_closed_forms(t):
    # Student's t has elementary CDFs for 1, 2 and 3 degrees of freedom.
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    u = t / math.sqrt(3)
    assert t_cdf(t, 3) == pytest.approx(0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi, abs=1e-12)


def test_betainc_identities():
    for x in (0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert betainc(3.5, 1, x) == pytest.approx(x ** 3.5, abs=1e-13)
        assert betainc(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
        assert betainc(2.2, 4.1, x) == pytest.approx(1 - betainc(4.1, 2.2, 1 - x), abs=1e-13)
    assert betainc(7.3, 7.3, 0.5) == pytest.approx(0.5, abs=1e-14)
    with pytest.raises(ValueError):
        betainc(1, 1, 1.5)


def test_agrees_with_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 29, 200):
        for q in (0.6, 0.9, 0.975, 0.999):
            assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)
        for t in (0.1, 1.7, 3.3, 12.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-300)


def test_paired_comparison_by_value():
    diffs = [1.0, 2.0, 3.0, 4.0]
    out = paired_comparison(diffs)
    sd = math.sqrt(5 / 3)
    half = 3.182446305 * sd / 2
    assert out["n"] == 4 and out["mean"] == 2.5 and out["sd"] == pytest.approx(sd)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-8)
    u = (2.5 / (sd / 2)) / math.sqrt(3)  # p from the closed-form CDF of t with 3 degrees of freedom
    assert out["p"] == pytest.approx(1 - 2 * (u / (1 + u * u) + math.atan(u)) / math.pi, abs=1e-12)
    assert math.isnan(paired_comparison([1.0])["p"])
    assert paired_comparison([0.0, 0.0, 0.0])["p"] == 1.0
    constant = paired_comparison([2.0, 2.0])
    assert constant["p"] == 0.0 and constant["ci_low"] == constant["ci_high"] == 2.0


# ---------------------------------------------------------------- the summary

def cl_results(model, classifier, seed, class_il, task_il, dataset="seq-digits", buffer=200, masked=1):
    rows = [[class_il + 10, None], [class_il + 5, class_il - 5]]
    return {"args": {"dataset": dataset, "model": model, "model_name": model, "classifier": classifier,
                     "masked_softmax": masked, "buffer_size": buffer, "seed": seed, "lr": 0.1,
                     "results_file": f"/elsewhere/{seed}.json", "device": "cpu"},
            "class_il": class_il, "task_il": task_il,
            "acc_matrix_class_il": rows, "acc_matrix_task_il": [[99.0, None], [98.0, task_il]],
            "wall_time_s": 1.0}


FC = {1: (80.0, 95.0), 2: (82.0, 96.0), 3: (78.0, 94.0), 4: (81.0, 97.0)}
FNO = {1: (83.0, 96.0), 2: (83.5, 96.5), 3: (81.0, 95.0), 4: (84.0, 97.0), 5: (90.0, 99.0)}  # seed 5: unpaired


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


@pytest.fixture
def results_dir(tmp_path):
    for seed, (c, t) in FC.items():
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, c, t))
    for seed, (c, t) in FNO.items():
        write(tmp_path / "sub" / f"fno{seed}.json", cl_results("er", "fno", seed, c, t))
    write(tmp_path / "derpp-fc.json", cl_results("derpp", "fc", 1, 70.0, 90.0, buffer=500))
    # Bad files: each must be named in the report and left out.
    write(tmp_path / "truncated.json", json.dumps(cl_results("er", "fc", 9, 10.0, 10.0))[:60])
    no_task_il = cl_results("er", "fc", 8, 10.0, 10.0)
    del no_task_il["task_il"]
    write(tmp_path / "no_task_il.json", no_task_il)
    unfinished = cl_results("er", "fc", 7, 10.0, 10.0)
    unfinished["acc_matrix_class_il"][-1][-1] = None
    write(tmp_path / "unfinished.json", unfinished)
    write(tmp_path / "not_results.json", [1, 2, 3])
    write(tmp_path / "copy" / "fc1.json", cl_results("er", "fc", 1, 80.0, 95.0))  # the same run again
    for method, ratio, seed, acc in [("arc-mixup", 100, 1, 82.0), ("arc-mixup", 100, 2, 84.0),
                                     ("mixup", 100, 1, 74.0)]:
        write(tmp_path / "lt" / f"{method}{seed}.json",
              {"setting": "long-tail", "accuracy": acc, "many_acc": acc + 10, "medium_acc": acc, "few_acc": acc - 20,
               "args": {"method": method, "dataset": "cifar10-lt", "imbalance_ratio": ratio, "seed": seed}})
    # a split without any "many" class: main_lt writes null for that group, which is not an error
    write(tmp_path / "lt" / "ce1.json",
          {"setting": "long-tail", "accuracy": 50.0, "many_acc": None, "medium_acc": 60.0, "few_acc": 40.0,
           "args": {"method": "ce", "dataset": "cifar10-lt", "imbalance_ratio": 100, "seed": 1}})
    return tmp_path


def test_summary_values_deltas_and_bad_files(results_dir, capsys):
    assert main([str(results_dir)]) == 0
    printed = capsys.readouterr().out
    for bad, why in [("truncated.json", "not valid JSON"), ("no_task_il.json", "'task_il'"),
                     ("unfinished.json", "incomplete"), ("not_results.json", "not a results file"),
                     (os.path.join("copy", "fc1.json"), "same run")]:
        lines = [l for l in printed.splitlines() if l.startswith(f"skipped {results_dir / bad}:")]
        assert len(lines) == 1 and why in lines[0], (bad, printed)
    stats = pd.read_csv(results_dir / "summary.csv")
    cl = stats[stats["setting"] == "continual"].set_index(["method", "buffer", "row", "metric"])
    fc_cil = [c for c, _ in FC.values()]
    assert cl.loc[("er+M", 200, "fc", "Class-IL"), "n"] == 4
    assert cl.loc[("er+M", 200, "fc", "Class-IL"), "mean"] == pytest.approx(sum(fc_cil) / 4)
    assert cl.loc[("er+M", 200, "fc", "Class-IL"), "std"] == pytest.approx(pd.Series(fc_cil).std(ddof=1))
    assert cl.loc[("er+M", 200, "fno", "Task-IL"), "n"] == 5
    assert cl.loc[("er+M", 200, "fno", "Task-IL"), "mean"] == pytest.approx(96.7)
    # The delta uses the four seeds both heads have: differences 3, 1.5, 3, 3.
    diffs = [FNO[s][0] - FC[s][0] for s in FC]
    delta = cl.loc[("er+M", 200, "FNO - FC", "Class-IL")]
    expected = paired_comparison(diffs)
    assert delta["n"] == 4 and delta["mean"] == pytest.approx(2.625)
    assert (delta["ci_low"], delta["ci_high"], delta["p"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"], expected["p"]))
    assert expected["ci_low"] == pytest.approx(2.625 - 3.182446305 * 0.75 / 2)
    assert ("derpp+M", 500, "FNO - FC", "Class-IL") not in cl.index  # no FNO runs: no delta row
    assert cl.loc[("derpp+M", 500, "fc", "Class-IL"), "n"] == 1
    lt = stats[stats["setting"] == "long-tail"].set_index(["row", "metric"])
    assert lt.loc[("arc-mixup", "Acc"), "mean"] == 83.0 and lt.loc[("arc-mixup", "Few"), "mean"] == 63.0
    assert lt.loc[("mixup", "Acc"), "n"] == 1
    assert lt.loc[("ce", "Acc"), "mean"] == 50.0 and ("ce", "Many") not in lt.index  # null group: no cell
    assert "ce1.json" not in printed
    # The printed and Markdown tables show the cells as mean ± std (n) and the delta with its CI and p.
    assert "80.25 ± 1.71 (4)" in printed and "+2.62 [+1.43, +3.82] p=0.006 (4)" in printed
    markdown = (results_dir / "summary.md").read_text()
    assert "| method | classifier | buffer 200 Class-IL |" in markdown and "80.25 ± 1.71 (4)" in markdown
    assert "## long-tail" in markdown and "83.00 ± 1.41 (2)" in markdown


def test_mixed_settings_and_unclean_pairs_are_reported(tmp_path, capsys):
    for seed in (1, 2):
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, 80.0, 95.0))
        fno = cl_results("er", "fno", seed, 82.0, 95.0)
        fno["args"]["lr"] = 0.03 if seed == 1 else 0.1
        if seed == 2:  # the same configuration reached through the alias and the best-args table
            fno["args"].update(model_name="orthermr", load_best_args=True)
        write(tmp_path / f"fno{seed}.json", fno)
    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "differ in lr; they are averaged together" in printed
    assert "also differ in lr: not a clean paired comparison" in printed
    assert "model_name" not in printed and "load_best_args" not in printed


def test_empty_directory_is_an_error(tmp_path, capsys):
    write(tmp_path / "junk.json", "{")
    assert main([str(tmp_path)]) == 1
    assert "no usable results files" in capsys.readouterr().out


def test_plots_are_written(results_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    main([str(results_dir), "--plots", str(out)])
    names = sorted(os.listdir(out))
    assert names == ["bars_seq-digits.png", "matrix_seq-digits_buffer200_er+M_fc.png",
                     "matrix_seq-digits_buffer200_er+M_fno.png", "matrix_seq-digits_buffer500_derpp+M_fc.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_are_one_line_and_the_tables_still_written(results_dir, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "plots"
    assert main([str(results_dir), "--plots", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [l for l in printed.splitlines() if "--plots" in l] == [
        "cannot draw --plots: matplotlib is not installed (pip install -e '.[plots]')"]
    assert "80.25 ± 1.71 (4)" in printed and (results_dir / "summary.csv").exists()
    assert not out.exists()
