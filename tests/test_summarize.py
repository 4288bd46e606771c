"""The summary on hand-made results files: means, stds, paired deltas by value (every fixed head against
FC), forgetting and BWT columns, the t distribution against printed tables and closed forms, the LaTeX
table's exact text, selection on validation, partial runs kept apart, long-tail final and best epochs,
bad files reported by name, CSV, Markdown and PNGs written."""
import json
import math
import os
import sys

import pandas as pd
import pytest

from utils.summarize.command import main
from utils.summarize.tables import paired_comparison, t_critical, two_sided_p


# ---------------------------------------------------------------- the t distribution (scipy.stats)

@pytest.mark.parametrize("df,expected", [  # two-sided 95% critical values from a printed t table
    (1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622), (10, 2.2281),
    (20, 2.0860), (30, 2.0423), (120, 1.9799)])
def test_t_critical_matches_the_table(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=5e-5)


def test_t_critical_other_levels_and_large_df():
    assert t_critical(4, level=0.99) == pytest.approx(4.6041, abs=5e-5)
    assert t_critical(7, level=0.90) == pytest.approx(1.8946, abs=5e-5)
    assert t_critical(1e6) == pytest.approx(1.95996, abs=5e-5)  # tends to the normal quantile


@pytest.mark.parametrize("t", [-30.0, -4.0, -1.3, -0.2, 0.0, 0.5, 1.0, 2.7, 9.0])
def test_two_sided_p_matches_closed_forms(t):
    # Student's t has elementary CDFs for 1 and 2 degrees of freedom: p = 2 (1 - F(|t|)).
    a = abs(t)
    assert two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(a) / math.pi, abs=1e-12)
    assert two_sided_p(t, 2) == pytest.approx(1 - a / math.sqrt(2 + a * a), abs=1e-12)
    assert two_sided_p(math.inf, 3) == 0.0


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


# ---------------------------------------------------------------- hand-made results files

def cl_results(model, classifier, seed, class_il, task_il, dataset="seq-digits", buffer=200, masked=1, **args):
    rows = [[class_il + 10, None], [class_il + 5, class_il - 5]]
    return {"args": {"dataset": dataset, "model": model, "model_name": model, "classifier": classifier,
                     "masked_softmax": masked, "buffer_size": buffer, "seed": seed, "lr": 0.1,
                     "fno_scale": 1 if classifier == "fno" else None,
                     "results_file": f"/elsewhere/{seed}.json", "device": "cpu", **args},
            "class_il": class_il, "task_il": task_il,
            "acc_matrix_class_il": rows, "acc_matrix_task_il": [[99.0, None], [98.0, task_il]],
            "forgetting_class_il": 10.0 + seed, "forgetting_task_il": 1.0,
            "bwt_class_il": -10.0 - seed, "bwt_task_il": -1.0, "wall_time_s": 1.0}


def lt_results(method, seed, acc, ratio=100, best=True):
    groups = {"accuracy": acc, "many_acc": acc + 10, "medium_acc": acc, "few_acc": acc - 20}
    out = {"setting": "long-tail", "headline": "final epoch", **groups, "final_epoch": {"epoch": 200, **groups},
           "args": {"method": method, "dataset": "cifar10-lt", "imbalance_ratio": ratio, "seed": seed}}
    if best:
        out["best_epoch"] = {"epoch": 190, "accuracy": acc + 2, "many_acc": acc + 12, "medium_acc": acc + 2,
                             "few_acc": acc - 18, "selected_on": "test"}
    return out


FC = {1: (80.0, 95.0), 2: (82.0, 96.0), 3: (78.0, 94.0), 4: (81.0, 97.0)}
FNO = {1: (83.0, 96.0), 2: (83.5, 96.5), 3: (81.0, 95.0), 4: (84.0, 97.0), 5: (90.0, 99.0)}  # seed 5: unpaired


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def lines_starting(printed, prefix):
    return [line for line in printed.splitlines() if line.startswith(prefix)]


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
    for method, seed, acc in [("arc-mixup", 1, 82.0), ("arc-mixup", 2, 84.0), ("mixup", 1, 74.0)]:
        write(tmp_path / "lt" / f"{method}{seed}.json", lt_results(method, seed, acc))
    # a split without any "many" class: main_lt writes null for that group, which is not an error
    ce = lt_results("ce", 1, 50.0, best=False)  # and a file from before best_epoch was written
    ce["many_acc"] = ce["final_epoch"]["many_acc"] = None
    write(tmp_path / "lt" / "ce1.json", ce)
    return tmp_path


def test_summary_values_deltas_and_bad_files(results_dir, capsys):
    assert main([str(results_dir)]) == 0
    printed = capsys.readouterr().out
    for bad, why in [("truncated.json", "not valid JSON"), ("no_task_il.json", "'task_il'"),
                     ("unfinished.json", "incomplete"), ("not_results.json", "not a results file"),
                     (os.path.join("copy", "fc1.json"), "same run")]:
        lines = lines_starting(printed, f"skipped {results_dir / bad}:")
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
    assert delta["n"] == 4 and delta["mean"] == pytest.approx(2.625) and delta["delta"]
    assert (delta["ci_low"], delta["ci_high"], delta["p"]) == pytest.approx(
        (expected["ci_low"], expected["ci_high"], expected["p"]))
    assert expected["ci_low"] == pytest.approx(2.625 - 3.182446305 * 0.75 / 2)
    assert ("derpp+M", 500, "FNO - FC", "Class-IL") not in cl.index  # no FNO runs: no delta row
    assert cl.loc[("derpp+M", 500, "fc", "Class-IL"), "n"] == 1
    # The printed and Markdown tables show the cells as mean ± std (n) and the delta with its CI and p.
    assert "80.25 ± 1.71 (4)" in printed and "+2.62 [+1.43, +3.82] p=0.006 (4)" in printed
    markdown = (results_dir / "summary.md").read_text()
    assert "## seq-digits, buffer 200" in markdown and "80.25 ± 1.71 (4)" in markdown
    assert not stats["partial"].any()


def test_forgetting_and_bwt_are_columns(results_dir, capsys):
    main([str(results_dir)])
    printed = capsys.readouterr().out
    headers = [line.split() for line in printed.splitlines() if line.lstrip().startswith(("Class-IL", "Forg", "BWT"))]
    # 120 columns hold two paired cells: the wide metrics follow in tables of their own
    assert headers[0] + headers[1] == ["Class-IL", "Task-IL", "Forgetting", "Class-IL", "Forgetting", "Task-IL",
                                       "BWT", "Class-IL", "BWT", "Task-IL"]  # buffer 200, with its paired row
    assert max(len(line) for line in printed.splitlines() if not line.startswith(("wrote", "seq-", "skipped", "long-tail"))) <= 120
    stats = pd.read_csv(results_dir / "summary.csv")
    cl = stats[stats["setting"] == "continual"].set_index(["method", "buffer", "row", "metric"])
    # forgetting_class_il = 10 + seed: FC seeds 1..4, FNO seeds 1..5
    assert cl.loc[("er+M", 200, "fc", "Forgetting Class-IL"), "mean"] == pytest.approx(12.5)
    assert cl.loc[("er+M", 200, "fno", "BWT Class-IL"), "mean"] == pytest.approx(-13.0)
    assert cl.loc[("er+M", 200, "FNO - FC", "Forgetting Class-IL"), "mean"] == 0.0
    assert cl.loc[("er+M", 200, "fno", "Forgetting Task-IL"), "std"] == 0.0
    fc_rows = [line for line in printed.splitlines() if line.startswith("er+M") and " fc " in line]
    assert "12.50 ± 1.29 (4)" in fc_rows[0] and "-12.50 ± 1.29 (4)" in fc_rows[1]  # the second part's row
    markdown = (results_dir / "summary.md").read_text()
    assert ("| method | classifier | Class-IL | Task-IL | Forgetting Class-IL | Forgetting Task-IL | "
            "BWT Class-IL | BWT Task-IL |") in markdown


def test_null_forgetting_leaves_the_cell_empty(tmp_path, capsys):
    """joint's matrices hold only the final row: its forgetting and BWT are null, not an error."""
    for seed in (1, 2):
        run = cl_results("joint", "fc", seed, 90.0 + seed, 99.0, buffer=0, masked=0)
        run.update(forgetting_class_il=None, forgetting_task_il=None, bwt_class_il=None, bwt_task_il=None,
                   acc_matrix_class_il=[[90.0 + seed, 90.0 + seed]], acc_matrix_task_il=[[99.0, 99.0]])
        write(tmp_path / f"joint{seed}.json", run)
    assert main([str(tmp_path)]) == 0
    stats = pd.read_csv(tmp_path / "summary.csv")
    assert set(stats["metric"]) == {"Class-IL", "Task-IL"}
    assert "91.50 ± 0.71 (2)" in capsys.readouterr().out


def test_every_fixed_head_is_paired_with_fc_and_head_flags_are_not_a_difference(tmp_path, capsys):
    for seed in (1, 2, 3):
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, 80.0 + seed, 95.0))
        write(tmp_path / f"etf{seed}.json", cl_results("er", "etf", seed, 70.0 + 2 * seed, 90.0))
        write(tmp_path / f"fno{seed}.json", cl_results("er", "fno", seed, 85.0, 96.0))
        write(tmp_path / f"fno0{seed}.json", cl_results("er", "fno", seed, 60.0, 80.0, fno_scale=0))
    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "warning" not in printed  # fno_scale belongs to the head: FC/FNO pairs differ only in the head
    stats = pd.read_csv(tmp_path / "summary.csv")
    cil = stats[stats["metric"] == "Class-IL"]
    assert cil["row"].tolist() == ["fc", "etf", "fno", "fno fno_scale=0",
                                   "ETF - FC", "FNO - FC", "FNO fno_scale=0 - FC"]
    deltas = cil.set_index("row")["mean"]
    assert deltas["ETF - FC"] == pytest.approx(-8.0) and deltas["FNO - FC"] == pytest.approx(3.0)
    assert deltas["FNO fno_scale=0 - FC"] == pytest.approx(-22.0)
    assert "ORTH - FC" not in printed and "FC - FC" not in printed


def test_runs_of_two_learning_rates_are_two_rows_never_one_average(tmp_path, capsys):
    for seed in (1, 2):
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, 80.0, 95.0))
        write(tmp_path / f"fno{seed}.json", cl_results("er", "fno", seed, 82.0 + seed, 95.0))
        slow = cl_results("er", "fno", seed, 60.0, 70.0, lr=0.01)
        if seed == 2:  # the same configuration reached through the alias and the best-args table
            slow["args"].update(model_name="orthermr", load_best_args=True)
        write(tmp_path / f"fno-slow{seed}.json", slow)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    cil = pd.read_csv(tmp_path / "summary.csv").query("metric == 'Class-IL'").set_index(["method", "row"])
    assert cil.loc[("er+M lr=0.1", "fno"), "mean"] == 83.5 and cil.loc[("er+M lr=0.1", "fno"), "n"] == 2
    assert cil.loc[("er+M lr=0.01", "fno"), "mean"] == 60.0 and cil.loc[("er+M lr=0.01", "fno"), "n"] == 2
    # the FC runs pair only with the FNO runs of their own learning rate
    assert cil.loc[("er+M lr=0.1", "FNO - FC"), "mean"] == 3.5
    assert ("er+M lr=0.01", "FNO - FC") not in cil.index
    assert "model_name" not in printed and "load_best_args" not in printed
    # --ignore lr puts them in one cell again, where seeds 1 and 2 then appear twice: refused, naming both files
    assert main([str(tmp_path), "--ignore", "lr"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 1 appears twice in one configuration (er+M, fno)" in err
    assert str(tmp_path / "fno1.json") in err and str(tmp_path / "fno-slow1.json") in err


def test_a_file_without_a_newer_flag_shares_the_cell_of_its_default(tmp_path, capsys):
    for seed in (1, 2):
        new = cl_results("er", "fno", seed, 80.0 + seed, 95.0, online=0, noise_rate=0, validation=0)
        write(tmp_path / f"new{seed}.json", new)
    write(tmp_path / "old3.json", cl_results("er", "fno", 3, 83.0, 95.0))  # written before those flags existed
    write(tmp_path / "noisy.json", cl_results("er", "fno", 1, 50.0, 95.0, noise_rate=0.2))
    assert main([str(tmp_path)]) == 0
    cil = pd.read_csv(tmp_path / "summary.csv").query("metric == 'Class-IL'").set_index(["method", "row"])
    assert cil.loc[("er+M noise_rate=0", "fno"), "n"] == 3
    assert cil.loc[("er+M noise_rate=0.2", "fno"), "n"] == 1
    # --group_by: only the named flags (and benchmark, buffer, method, head) tell configurations apart
    assert main([str(tmp_path), "--group_by", "lr"]) == 2
    assert "seed 1 appears twice" in capsys.readouterr().err
    assert main([str(tmp_path), "--group_by", "nosuchflag"]) == 2
    assert "--group_by nosuchflag: no run has such a flag" in capsys.readouterr().err


def test_learnable_heads_are_paired_too_and_columns_choose_the_metrics(tmp_path, capsys):
    for seed in (1, 2):
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, 80.0, 95.0))
        write(tmp_path / f"cos{seed}.json", cl_results("er", "cosine", seed, 81.0 + seed, 95.0))
    assert main([str(tmp_path), "--columns", "Class-IL"]) == 0
    printed = capsys.readouterr().out
    assert "COSINE - FC" in printed and "Task-IL" not in printed
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--columns", "Accuracy"])
    assert "--columns Accuracy: not a metric" in capsys.readouterr().err


def test_empty_directory_is_an_error(tmp_path, capsys):
    write(tmp_path / "junk.json", "{")
    assert main([str(tmp_path)]) == 1
    assert "no usable results files" in capsys.readouterr().out


# ---------------------------------------------------------------- LaTeX

TWO_RUN_LATEX = r"""% Written by python -m utils.summarize --latex; compiles as written (e.g. pdflatex).
\documentclass{article}
\usepackage{booktabs}
\begin{document}
\begin{table}
\centering
\caption{Final accuracy (\%): mean$_{\pm\mathrm{std}}$ over seeds. Rows HEAD$-$FC: mean paired difference over the seeds run with both heads$_{[95\%\ \mathrm{CI}]}$.}
\begin{tabular}{lllcc}
\toprule
 & & & \multicolumn{2}{c}{seq-digits} \\
\cmidrule(lr){4-5}
Buffer & Method & Head & Class-IL & Task-IL \\
\midrule
200 & er+M & FC & $80.00$ & $95.00$ \\
 &  & FNO & $83.00$ & $96.00$ \\
 &  & FNO$-$FC & $+3.00$ & $+1.00$ \\
\bottomrule
\end{tabular}
\end{table}
\end{document}
"""


def test_latex_two_run_table_exact_text(tmp_path, capsys):
    write(tmp_path / "R" / "fc.json", cl_results("er", "fc", 1, 80.0, 95.0))
    write(tmp_path / "R" / "fno.json", cl_results("er", "fno", 1, 83.0, 96.0))
    out = tmp_path / "table.tex"
    assert main([str(tmp_path / "R"), "--latex", str(out)]) == 0
    assert out.read_text() == TWO_RUN_LATEX
    assert f"wrote {out}" in capsys.readouterr().out


def test_latex_subscripts_benchmarks_and_buffer_groups(results_dir, tmp_path, capsys):
    write(results_dir / "cifar" / "fc.json", cl_results("er_x", "fc", 1, 50.0, 70.0, dataset="seq-cifar10"))
    out = tmp_path / "table.tex"
    main([str(results_dir), "--latex", str(out)])
    text = out.read_text()
    assert r"\begin{tabular}{lllcccc}" in text
    assert (r" & & & \multicolumn{2}{c}{seq-digits} & \multicolumn{2}{c}{seq-cifar10} \\" + "\n"
            + r"\cmidrule(lr){4-5}\cmidrule(lr){6-7}") in text
    assert r"200 & er+M & FC & $80.25_{\pm 1.71}$ & $95.50_{\pm 1.29}$ & -- & -- \\" in text
    assert r" &  & FNO$-$FC & $+2.62_{[+1.43, +3.82]}$ & $+0.62_{[-0.14, +1.39]}$ & -- & -- \\" in text
    assert r" & er\_x+M & FC & -- & -- & $50.00$ & $70.00$ \\" in text       # escaped
    assert "\\midrule\n500 & derpp+M & FC & $70.00$ & $90.00$ & -- & -- \\\\\n\\bottomrule" in text
    assert text.count(r"\begin{") == text.count(r"\end{") == 3


# ---------------------------------------------------------------- selection on validation

def validated(model, classifier, seed, lr, val, test, **args):
    run = cl_results(model, classifier, seed, test, test + 10, lr=lr, validation=10, **args)
    run["validation"] = {"class_il": val, "task_il": val + 10}
    return run


def test_select_on_validation_reports_test_accuracy_of_the_best_validated_setting(tmp_path, capsys):
    # FC: lr 0.1 is better on validation (worse on test); FNO: lr 0.03 is better on validation.
    for seed in (1, 2):
        write(tmp_path / f"fc-a{seed}.json", validated("er", "fc", seed, 0.1, 70.0 + seed, 60.0 + seed))
        write(tmp_path / f"fc-b{seed}.json", validated("er", "fc", seed, 0.03, 65.0, 90.0))
        write(tmp_path / f"fno-a{seed}.json", validated("er", "fno", seed, 0.1, 50.0, 99.0))
        write(tmp_path / f"fno-b{seed}.json", validated("er", "fno", seed, 0.03, 80.0, 70.0 + 2 * seed))
        # DER++: alpha is one of its own flags, so it is swept too
        for alpha, val in ((0.1, 40.0), (0.5, 45.0)):
            write(tmp_path / f"derpp{alpha}-{seed}.json",
                  validated("derpp", "fc", seed, 0.03, val, 50.0 + 10 * alpha, alpha=alpha, beta=0.5))
    assert main([str(tmp_path), "--select_on", "validation"]) == 0
    printed = capsys.readouterr().out
    chosen = lines_starting(printed, "selected ")
    assert len(chosen) == 3
    assert any("lr=0.1 minibatch_size=None for seq-digits, buffer 200, er+M, fc: validation Class-IL 71.50 "
               "(2 seed(s)), best of 2 setting(s)" in line for line in chosen), chosen
    assert any("lr=0.03" in line and "alpha=0.5" in line and "derpp+M" in line for line in chosen), chosen
    assert "warning" not in printed  # the FC/FNO pairs differ in lr by selection, not by mistake
    stats = pd.read_csv(tmp_path / "summary.csv")
    cil = stats[stats["metric"] == "Class-IL"].set_index(["method", "row"])
    assert cil.loc[("er+M", "fc"), "mean"] == pytest.approx(61.5) and cil.loc[("er+M", "fc"), "n"] == 2
    assert cil.loc[("er+M", "fno"), "mean"] == pytest.approx(73.0)
    assert cil.loc[("er+M", "FNO - FC"), "mean"] == pytest.approx(11.5)
    assert cil.loc[("derpp+M", "fc"), "mean"] == pytest.approx(55.0)


def test_select_on_validation_without_validation_fields_is_refused_in_one_line(results_dir, capsys):
    assert main([str(results_dir), "--select_on", "validation"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "has a 'validation' field" in captured.err
    assert "--validation PCT" in captured.err and "buffer 200" not in captured.out   # refused before any table
    assert not (results_dir / "summary.csv").exists()


def test_select_on_validation_with_partial_runs_lacking_validation(tmp_path, capsys):
    write(tmp_path / "a.json", validated("er", "fc", 1, 0.1, 70.0, 60.0))
    smoke = cl_results("er", "fc", 1, 10.0, 20.0, debug_mode=1)
    smoke["partial"] = True
    write(tmp_path / "smoke.json", smoke)
    assert main([str(tmp_path), "--select_on", "validation", "--include_partial"]) == 0
    printed = capsys.readouterr().out
    assert "--select_on validation: none of the partial runs has a 'validation' field" in printed
    assert "60.00 (1)" in printed and "10.00 (1)" in printed


def test_runs_without_validation_are_left_out_of_a_selection(tmp_path, capsys):
    write(tmp_path / "a.json", validated("er", "fc", 1, 0.1, 70.0, 60.0))
    write(tmp_path / "b.json", cl_results("er", "fc", 2, 99.0, 99.0, validation=10))
    assert main([str(tmp_path), "--select_on", "validation"]) == 0
    printed = capsys.readouterr().out
    assert "left out 1 run(s) without a 'validation' field" in printed
    assert "60.00 (1)" in printed and "99.00" not in printed


# ---------------------------------------------------------------- partial runs

def test_partial_runs_are_never_mixed_with_full_ones(results_dir, capsys):
    partial = cl_results("er", "fc", 1, 10.0, 20.0, debug_mode=1)
    partial["partial"] = True
    write(results_dir / "smoke" / "fc1.json", partial)
    assert main([str(results_dir)]) == 0
    printed = capsys.readouterr().out
    assert len(lines_starting(printed, "left out 1 partial run(s)")) == 1
    assert "--include_partial" in printed and "10.00" not in printed
    stats = pd.read_csv(results_dir / "summary.csv")
    assert stats.loc[(stats["row"] == "fc") & (stats["metric"] == "Class-IL") & (stats["method"] == "er+M"),
                     "n"].tolist() == [4]

    assert main([str(results_dir), "--include_partial"]) == 0
    printed = capsys.readouterr().out
    assert "left out" not in printed
    assert "seq-digits, buffer 200 (partial runs):" in printed and "10.00 (1)" in printed
    stats = pd.read_csv(results_dir / "summary.csv")
    fc = stats[(stats["row"] == "fc") & (stats["metric"] == "Class-IL") & (stats["method"] == "er+M")]
    assert sorted(zip(fc["partial"], fc["n"], fc["mean"])) == [(False, 4, 80.25), (True, 1, 10.0)]
    assert "## seq-digits, buffer 200 (partial runs)" in (results_dir / "summary.md").read_text()


def test_only_partial_runs_without_include_partial(tmp_path, capsys):
    run = cl_results("er", "fc", 1, 10.0, 20.0)
    run["partial"] = True
    write(tmp_path / "a.json", run)
    assert main([str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "left out 1 partial run(s)" in printed and "no usable results files" in printed


# ---------------------------------------------------------------- long-tail

def test_long_tail_final_and_best_epochs(results_dir, capsys):
    main([str(results_dir)])
    printed = capsys.readouterr().out
    assert "long-tail cifar10-lt, ratio 100" in printed and "best epoch (selected on the test set" in printed
    stats = pd.read_csv(results_dir / "summary.csv")
    lt = stats[stats["setting"] == "long-tail"].set_index(["row", "epoch", "metric"])
    assert lt.loc[("arc-mixup", "final epoch", "Acc"), "mean"] == 83.0
    assert lt.loc[("arc-mixup", "final epoch", "Few"), "mean"] == 63.0
    assert lt.loc[("arc-mixup", "best epoch (selected on test)", "Acc"), "mean"] == 85.0
    assert lt.loc[("mixup", "final epoch", "Acc"), "n"] == 1
    assert lt.loc[("ce", "final epoch", "Acc"), "mean"] == 50.0
    assert ("ce", "final epoch", "Many") not in lt.index                           # null group: no cell
    assert ("ce", "best epoch (selected on test)", "Acc") not in lt.index          # older file: no best
    markdown = (results_dir / "summary.md").read_text()
    assert ("| method | final epoch Acc | final epoch Many | final epoch Medium | final epoch Few | "
            "best epoch (selected on test) Acc |") in markdown
    assert "83.00 ± 1.41 (2)" in markdown


# ---------------------------------------------------------------- plots

def test_plots_are_written(results_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    main([str(results_dir), "--plots", str(out)])
    names = sorted(os.listdir(out))
    assert names == ["bars_seq-digits.png", "longtail_cifar10-lt_ratio100.png",
                     "matrix_seq-digits_buffer200_er+M_fc.png", "matrix_seq-digits_buffer200_er+M_fno.png",
                     "matrix_seq-digits_buffer500_derpp+M_fc.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 5 plots" in capsys.readouterr().out


def test_long_tail_bars_show_groups_of_each_epoch(results_dir):
    pytest.importorskip("matplotlib")
    from utils.summarize.figures import lt_figure
    from utils.summarize.results import read_directory
    from utils.summarize.tables import lt_statistics
    records = [r for r in read_directory(str(results_dir), lambda line: None) if r["setting"] == "long-tail"]
    fig = lt_figure(lt_statistics(pd.DataFrame(records)), "cifar10-lt", 100)
    assert [ax.get_title() for ax in fig.axes] == [
        "cifar10-lt, ratio 100: final epoch (mean ± std)",
        "cifar10-lt, ratio 100: best epoch (selected on test) (mean ± std)"]
    final, best = fig.axes
    assert [t.get_text() for t in final.get_xticklabels()] == ["Acc", "Many", "Medium", "Few"]
    assert [c.get_label() for c in final.containers if hasattr(c, "patches")] == ["arc-mixup", "ce", "mixup"]
    bars = [c for c in best.containers if hasattr(c, "patches")]
    heights = [round(p.get_height(), 2) for p in bars[0].patches]
    assert heights == [85.0, 95.0, 85.0, 65.0]                                     # arc-mixup's best epoch
    assert final.get_ylim()[0] == 0


def test_long_tail_plot_without_groups_says_why(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = lt_results("ce", 1, 50.0, best=False)
    for key in ("many_acc", "medium_acc", "few_acc"):
        run[key] = run["final_epoch"][key] = None
    write(tmp_path / "R" / "ce.json", run)
    main([str(tmp_path / "R"), "--plots", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    assert "no many/medium/few plot for cifar10-lt, ratio 100" in printed and "wrote 0 plots" in printed


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
