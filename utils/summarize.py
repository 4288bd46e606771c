"""The tables of a directory of results files: ``python -m utils.summarize DIR [--plots OUT] [--latex OUT.tex]``.

Continual-learning runs: one table per (benchmark, buffer size); rows (method,
head), columns final Class-IL / Task-IL accuracy, forgetting and backward
transfer in both settings; cells "mean ± std (n seeds)".  The method is the
model name with "+M" when the masked softmax was on; the head is the
classifier, with any head-owned flag that differs from its default (e.g.
``fno fno_scale=0``).  Every fixed head (``FIXED`` in ``backbone.heads``) is
compared with FC in a paired row, e.g. "FNO - FC": runs with the same seed
share the data order, the initialisation of every shared layer and the buffer
draws, so the per-seed differences d_i = HEAD_i - FC_i over the seeds both have
are what is compared: their mean, its 95% confidence interval
mean ± t(0.975, n-1) * sd / sqrt(n), and the two-sided paired t-test's p-value
(Student's t from scipy.stats).

Long-tail runs (``"setting": "long-tail"``): one table per (dataset, imbalance
ratio); rows method, columns overall / many / medium / few-shot accuracy of the
final epoch (the headline) and of the best epoch, which was selected on the
test set.

``--select_on validation`` keeps, per configuration, the hyper-parameters with
the best mean validation Class-IL and reports their test accuracy.  Runs marked
``"partial": true`` (debug / smoke runs) are never mixed with full runs: they are
left out, or summarized apart with ``--include_partial``.

``--wandb ENTITY/PROJECT [--sweep ID]`` reads the same results from the
finished wandb runs instead (each run's summary keeps its results file, see
``utils.wandb_logger``), so runs spread over machines need no copying; the
tables go to DIR (default ``results/wandb/ENTITY-PROJECT[-ID]``).

Every ``*.json`` under DIR is read (``utils.results``); a file that cannot be
read, is not a results file or lacks a field is reported by name and left out.
The tables are printed and written beside the results as ``summary.csv`` (one
numeric row per cell) and ``summary.md``.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Dict, List, Optional

import pandas as pd
from scipy import stats as scipy_stats

from utils import plots
from utils.io import atomic_write_bytes
from utils.results import CL_METRICS, LT_EPOCHS, LT_METRICS, lt_key, read_directory, read_wandb

BENCHMARK_ORDER = ("seq-digits", "seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")
BASELINE_HEAD = "fc"
LATEX_METRICS = ("Class-IL", "Task-IL")
SWEPT_HYPERPARAMETERS = ("lr", "minibatch_size")  # and every flag the method declares (its FLAGS)
STATS_COLUMNS = ["dataset", "buffer", "method", "row", "delta", "metric", "mean", "std", "n",
                 "ci_low", "ci_high", "p"]


# ----------------------------------------------------------------------------------------------
# Statistics.

def t_critical(df: float, level: float = 0.95) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    return float(scipy_stats.t.ppf(0.5 + level / 2.0, df))


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return float(2.0 * scipy_stats.t.sf(abs(t), df))


def paired_comparison(differences: List[float], level: float = 0.95) -> dict:
    """Mean of paired differences, its ``level`` confidence interval and the paired t-test's p-value."""
    n = len(differences)
    mean = sum(differences) / n if n else math.nan
    out = {"n": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    if n < 2:
        return out
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_critical(n - 1, level) * se
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / se
    out.update(sd=sd, ci_low=mean - half, ci_high=mean + half, p=two_sided_p(t, n - 1))
    return out


# ----------------------------------------------------------------------------------------------
# Heads and configurations.

def fixed_heads() -> set:
    """The registered heads whose class matrix is fixed: each is paired against FC."""
    from backbone.heads import get_head_class, head_names
    return {name for name in head_names() if get_head_class(name).FIXED}


def head_flag_names() -> set:
    """Every flag a registered head declares (e.g. fno_scale): paired runs may differ in these."""
    from backbone.heads import get_head_class, head_names
    return {flag for name in head_names() for flag in get_head_class(name).FLAGS}


def head_order(head: str):
    return (head != BASELINE_HEAD, head)


def display_head(head: str) -> str:
    """A head as shown in paired rows and plots: "FNO", "FNO fno_scale=0"."""
    classifier, *flags = head.split()
    return " ".join([classifier.upper()] + flags)


def delta_label(head: str) -> str:
    """The paired row of a head against FC: "FNO - FC", "FNO fno_scale=0 - FC"."""
    return f"{display_head(head)} - {display_head(BASELINE_HEAD)}"


def swept_flags(model: str) -> tuple:
    """The hyper-parameters a selection may choose for ``model``: lr, minibatch_size and the method's flags."""
    from models import get_model_class
    from utils.registry import UnknownNameError
    try:
        own = tuple(sorted(get_model_class(model).FLAGS))
    except UnknownNameError:
        own = ()
    return SWEPT_HYPERPARAMETERS + own


def _describe(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def select_on_validation(frame: pd.DataFrame, report=print) -> pd.DataFrame:
    """Per configuration (runs equal in every flag but the seed and the swept hyper-parameters), the runs of
    the hyper-parameter setting with the best mean validation Class-IL; ties go to the first setting in
    sorted order.  Reports each choice in one line."""
    chosen = []
    configs, settings = [], []
    for row in frame.itertuples():
        swept = swept_flags(row.model)
        configs.append(json.dumps({k: v for k, v in row.identity.items() if k not in swept}, sort_keys=True,
                                  default=str))
        settings.append(json.dumps({k: row.identity.get(k) for k in swept}, sort_keys=True, default=str))
    frame = frame.assign(_config=configs, _setting=settings)
    for _, group in frame.groupby("_config", sort=True):
        means = group.groupby("_setting", sort=True)["val_class_il"].mean()
        best = means.idxmax()
        runs = group[group["_setting"] == best]
        first = runs.iloc[0]
        report(f"selected {_describe(json.loads(best))} for {first['dataset']}, buffer {first['buffer']}, "
               f"{first['method']}, {first['head']}: validation Class-IL {means[best]:.2f} "
               f"({len(runs)} seed(s)), best of {len(means)} setting(s)")
        chosen.append(runs)
    return pd.concat(chosen).drop(columns=["_config", "_setting"])


def warn_mixed_settings(frame: pd.DataFrame, cell: List[str], report=print) -> None:
    """Report cells whose runs differ in anything but the seed: they are averaged together."""
    for key, group in frame.groupby(cell, sort=True):
        identities = group["identity"].tolist()
        differing = sorted(k for k in set().union(*identities) if len({repr(i.get(k)) for i in identities}) > 1)
        if differing:
            report(f"warning: the runs of {dict(zip(cell, key))} differ in {', '.join(differing)}; "
                   f"they are averaged together (--select_on validation picks one setting per configuration)")


def warn_unpaired(frame: pd.DataFrame, fixed: set, ignore: set, report=print) -> None:
    """Report head/FC pairs (same cell and seed) that differ in more than the head (and ``ignore``)."""
    keys = ["dataset", "buffer", "method", "seed"]
    for key, group in frame.groupby(keys, sort=True):
        by_head = {row.head: row.identity for row in group.itertuples()}
        if BASELINE_HEAD not in by_head:
            continue
        fc = by_head[BASELINE_HEAD]
        for head, identity in sorted(by_head.items()):
            if head.split()[0] not in fixed:
                continue
            differing = sorted(k for k in set(fc) | set(identity)
                               if k not in ignore and fc.get(k) != identity.get(k))
            if differing:
                report(f"warning: the FC and {head} runs of {dict(zip(keys, key))} also differ in "
                       f"{', '.join(differing)}: not a clean paired comparison")


# ----------------------------------------------------------------------------------------------
# Tables.

def _benchmark_key(name: str):
    return (BENCHMARK_ORDER.index(name), name) if name in BENCHMARK_ORDER else (len(BENCHMARK_ORDER), name)


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def cl_statistics(frame: pd.DataFrame, fixed: set) -> pd.DataFrame:
    """One numeric row per (dataset, buffer, method, row, metric): each head's mean/std/n and each fixed
    head's paired difference from FC (``delta`` True)."""
    rows = []
    for (dataset, buffer, method), group in frame.groupby(["dataset", "buffer", "method"], sort=False):
        heads = sorted(group["head"].unique(), key=head_order)
        base = dict(dataset=dataset, buffer=buffer, method=method)
        for metric in CL_METRICS:
            for head in heads:
                values = group.loc[group["head"] == head, metric].dropna()
                if len(values):
                    rows.append(dict(base, row=head, delta=False, metric=metric, mean=float(values.mean()),
                                     std=_std(values), n=len(values)))
            per_seed = group.groupby(["seed", "head"])[metric].mean().unstack("head")
            for head in heads:
                if head.split()[0] not in fixed or BASELINE_HEAD not in per_seed.columns:
                    continue
                pairs = per_seed[[BASELINE_HEAD, head]].dropna()
                if len(pairs):
                    s = paired_comparison((pairs[head] - pairs[BASELINE_HEAD]).tolist())
                    rows.append(dict(base, row=delta_label(head), delta=True, metric=metric, mean=s["mean"],
                                     std=s["sd"], n=s["n"], ci_low=s["ci_low"], ci_high=s["ci_high"], p=s["p"]))
    stats = pd.DataFrame(rows, columns=STATS_COLUMNS)
    if stats.empty:
        return stats
    order = stats.apply(lambda r: (_benchmark_key(r["dataset"]), r["buffer"], r["method"], r["delta"],
                                   head_order(r["row"])), axis=1)
    return stats.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")


def format_cell(row) -> str:
    if row.get("delta", False):
        if row["n"] < 2:
            return f"{row['mean']:+.2f} ({row['n']})"
        p = "p<0.001" if row["p"] < 0.001 else f"p={row['p']:.3f}"
        return f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] {p} ({row['n']})"
    if row["n"] < 2:
        return f"{row['mean']:.2f} ({row['n']})"
    return f"{row['mean']:.2f} ± {row['std']:.2f} ({row['n']})"


def _ordered_pivot(part: pd.DataFrame, index: List[str], columns, column_order: List) -> pd.DataFrame:
    """The cells of ``part`` as a table, rows in the order they appear in ``part``."""
    part = part.assign(cell=part.apply(format_cell, axis=1))
    table = part.pivot_table(index=index, columns=columns, values="cell", aggfunc="first", sort=False)
    rows = list(dict.fromkeys(part[index].itertuples(index=False, name=None)))
    if len(index) == 1:
        rows = [r[0] for r in rows]
    table = table.reindex(index=rows, columns=[c for c in column_order if c in table.columns])
    return table.fillna("")


def cl_tables(stats: pd.DataFrame) -> Dict[tuple, pd.DataFrame]:
    """Per (benchmark, buffer), the display table: rows (method, head / paired row), columns metrics."""
    tables = {}
    for (dataset, buffer), part in stats.groupby(["dataset", "buffer"], sort=False):
        table = _ordered_pivot(part, ["method", "row"], "metric", list(CL_METRICS))
        table.index.names = ["method", "classifier"]
        table.columns.name = None
        tables[(dataset, buffer)] = table
    return tables


def lt_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Long-tail runs: mean/std/n per (dataset, ratio, method, epoch, metric)."""
    long = [dict(dataset=r["dataset"], imbalance_ratio=r["imbalance_ratio"], method=r["method"], epoch=epoch,
                 metric=metric, value=r[lt_key(epoch, metric)])
            for r in frame.to_dict("records") for epoch in LT_EPOCHS for metric in LT_METRICS
            if not math.isnan(r[lt_key(epoch, metric)])]
    long = pd.DataFrame(long, columns=["dataset", "imbalance_ratio", "method", "epoch", "metric", "value"])
    stats = (long.groupby(["dataset", "imbalance_ratio", "method", "epoch", "metric"], sort=True)["value"]
             .agg(mean="mean", std=_std, n="size").reset_index())
    order = stats.apply(lambda r: (r["dataset"], r["imbalance_ratio"], r["method"], list(LT_EPOCHS).index(r["epoch"]),
                                   list(LT_METRICS).index(r["metric"])), axis=1)
    stats = stats.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    return stats.rename(columns={"method": "row"}).assign(delta=False)


def lt_tables(stats: pd.DataFrame) -> Dict[tuple, pd.DataFrame]:
    """Per (dataset, ratio): rows method, columns (epoch, metric)."""
    tables = {}
    for (dataset, ratio), part in stats.groupby(["dataset", "imbalance_ratio"], sort=False):
        order = [(e, m) for e in LT_EPOCHS for m in LT_METRICS]
        table = _ordered_pivot(part, ["row"], ["epoch", "metric"], order)
        table.index.name = "method"
        table.columns.names = [None, None]
        tables[(dataset, ratio)] = table
    return tables


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; multi-level labels are joined with spaces."""
    def label(value):
        return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)

    index_names = [n or "" for n in table.index.names]
    header = index_names + [label(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        index = index if isinstance(index, tuple) else (index,)
        lines.append("| " + " | ".join([str(i) for i in index] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def _flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out.columns = [" ".join(str(v) for v in c) if isinstance(c, tuple) else str(c) for c in table.columns]
    return out


# ----------------------------------------------------------------------------------------------
# LaTeX: the paper's layout, rows (buffer, method, head / paired row), columns (benchmark, Class-IL / Task-IL).

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_cell(row) -> str:
    """mean with the std as a subscript; a paired row: mean difference with its 95% CI as a subscript."""
    if row["delta"]:
        if row["n"] < 2:
            return f"${row['mean']:+.2f}$"
        return f"${row['mean']:+.2f}_{{[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]}}$"
    if row["n"] < 2:
        return f"${row['mean']:.2f}$"
    return f"${row['mean']:.2f}_{{\\pm {row['std']:.2f}}}$"


def latex_row_label(row: str, delta: bool) -> str:
    if delta:
        left, right = row.rsplit(" - ", 1)
        return f"{latex_escape(left)}$-${latex_escape(right)}"
    return latex_escape(display_head(row))


def to_latex(stats: pd.DataFrame) -> str:
    """A complete LaTeX document (article + booktabs) holding the table; compiles as written."""
    stats = stats[stats["metric"].isin(LATEX_METRICS)]
    benchmarks = sorted(stats["dataset"].unique(), key=_benchmark_key)
    columns = [(b, m) for b in benchmarks for m in LATEX_METRICS]
    cells = {(r["buffer"], r["method"], r["row"], r["dataset"], r["metric"]): latex_cell(r)
             for r in stats.to_dict("records")}
    rows = sorted({(r["buffer"], r["method"], r["row"], r["delta"]) for r in stats.to_dict("records")},
                  key=lambda r: (r[0], r[1], r[3], head_order(r[2])))
    lines = [
        "% Written by python -m utils.summarize --latex; compiles as written (e.g. pdflatex).",
        r"\documentclass{article}",
        r"\usepackage{booktabs}",
        r"\begin{document}",
        r"\begin{table}",
        r"\centering",
        r"\caption{Final accuracy (\%): mean$_{\pm\mathrm{std}}$ over seeds. "
        r"Rows HEAD$-$FC: mean paired difference over the seeds run with both heads$_{[95\%\ \mathrm{CI}]}$.}",
        r"\begin{tabular}{lll" + "c" * len(columns) + "}",
        r"\toprule",
        " & & & " + " & ".join(rf"\multicolumn{{{len(LATEX_METRICS)}}}{{c}}{{{latex_escape(b)}}}"
                               for b in benchmarks) + r" \\",
        "".join(rf"\cmidrule(lr){{{4 + i * len(LATEX_METRICS)}-{3 + (i + 1) * len(LATEX_METRICS)}}}"
                for i in range(len(benchmarks))),
        "Buffer & Method & Head & " + " & ".join(m for _, m in columns) + r" \\",
        r"\midrule",
    ]
    previous = (None, None)
    for buffer, method, row, delta in rows:
        if previous[0] is not None and buffer != previous[0]:
            lines.append(r"\midrule")
        shown_buffer = "" if buffer == previous[0] else ("--" if buffer == 0 else latex_escape(buffer))
        shown_method = "" if (buffer, method) == previous else latex_escape(method)
        values = [cells.get((buffer, method, row, b, m), "--") for b, m in columns]
        lines.append(" & ".join([shown_buffer, shown_method, latex_row_label(row, delta)] + values) + r" \\")
        previous = (buffer, method)
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", r"\end{document}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots (utils.plots: the shared style).

def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(text))


def mean_matrix(matrices: List[list]):
    """The element-wise mean of accuracy matrices of one shape; NaN where no run has a value (unseen tasks)."""
    import numpy as np
    stack = np.array([[[math.nan if v is None else v for v in row] for row in m] for m in matrices], dtype=float)
    counts = (~np.isnan(stack)).sum(axis=0)
    return np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)


def matrix_figure(matrices: List[list], title: str):
    """The mean Class-IL accuracy matrix as a heatmap, and each task's accuracy across the task sequence."""
    import numpy as np
    shapes = {(len(m), len(m[0])) for m in matrices}
    matrices = [m for m in matrices if (len(m), len(m[0])) == max(shapes)]
    acc = mean_matrix(matrices)
    n_rows, n_tasks = acc.shape
    fig, (ax_heat, ax_curve) = plots.new_figure(1, 2, panel_width=5.5, panel_height=4.5)
    image = ax_heat.imshow(acc, vmin=0, vmax=100, cmap="viridis")
    for t in range(n_rows):
        for j in range(n_tasks):
            if not np.isnan(acc[t, j]):
                ax_heat.text(j, t, f"{acc[t, j]:.0f}", ha="center", va="center", fontsize=8,
                             color="white" if acc[t, j] < 60 else "black")
    ax_heat.set_xticks(range(n_tasks), [str(j + 1) for j in range(n_tasks)])
    ax_heat.set_yticks(range(n_rows), [str(n_tasks - n_rows + t + 1) for t in range(n_rows)])
    ax_heat.set_title("Class-IL accuracy matrix (mean, %)", fontsize=10)
    ax_heat.set_xlabel("evaluated on task")
    ax_heat.set_ylabel("after training task")
    fig.colorbar(image, ax=ax_heat, fraction=0.046, pad=0.04)
    after = np.arange(n_tasks - n_rows + 1, n_tasks + 1)
    for j in range(n_tasks):
        seen = ~np.isnan(acc[:, j])
        if seen.any():
            ax_curve.plot(after[seen], acc[seen, j], marker="o", markersize=3, linewidth=1, label=f"task {j + 1}")
    ax_curve.plot(after, np.nanmean(acc, axis=1), color="black", linewidth=2.5, label="mean of seen")
    ax_curve.set_xticks(after)
    ax_curve.set_ylim(*plots.ACCURACY_LIMITS)
    plots.style(ax_curve, "per-task accuracy over the sequence", "after training task", "Class-IL accuracy (%)")
    ax_curve.legend(fontsize=7, ncol=2 if n_tasks > 5 else 1, loc="lower left")
    fig.suptitle(f"{title}  (n={len(matrices)} seeds)")
    return fig


def bars_figure(stats: pd.DataFrame, dataset: str):
    """Every head per (method, buffer), mean with std error bars, one panel per Class-IL / Task-IL."""
    part = stats[(stats["dataset"] == dataset) & ~stats["delta"].astype(bool)]
    groups = list(dict.fromkeys(zip(part["method"], part["buffer"])))
    heads = sorted(part["row"].unique(), key=head_order)
    fig, axes = plots.new_figure(1, len(LATEX_METRICS), panel_width=max(5.0, 1.6 * len(groups)), panel_height=4.2)
    for ax, metric in zip(axes, LATEX_METRICS):
        sel = part[part["metric"] == metric].set_index(["method", "buffer", "row"])
        series = [(display_head(head), [sel["mean"].get((m, b, head), math.nan) for m, b in groups],
                   [sel["std"].get((m, b, head), math.nan) for m, b in groups]) for head in heads]
        plots.grouped_bars(ax, [f"{m}\nbuffer {b}" for m, b in groups], series)
        ax.set_ylim(0, 115)
        plots.style(ax, f"{dataset}: {metric} (mean ± std over seeds)", "", f"{metric} accuracy (%)")
    return fig


def lt_figure(stats: pd.DataFrame, dataset: str, ratio):
    """Overall / many / medium / few-shot accuracy per method, one panel per epoch (final, best)."""
    part = stats[(stats["dataset"] == dataset) & (stats["imbalance_ratio"] == ratio)]
    methods = list(dict.fromkeys(part["row"]))
    epochs = [e for e in LT_EPOCHS if (part["epoch"] == e).any()]
    fig, axes = plots.new_figure(1, len(epochs), panel_width=max(5.0, 1.2 * len(methods) + 2), panel_height=4.2)
    for ax, epoch in zip(axes, epochs):
        sel = part[part["epoch"] == epoch].set_index(["row", "metric"])
        series = [(method, [sel["mean"].get((method, m), math.nan) for m in LT_METRICS],
                   [sel["std"].get((method, m), math.nan) for m in LT_METRICS]) for method in methods]
        plots.grouped_bars(ax, list(LT_METRICS), series)
        ax.set_ylim(0, 115)
        plots.style(ax, f"{dataset}, ratio {ratio}: {epoch} (mean ± std)", "", "accuracy (%)")
    return fig


def draw_plots(cl: pd.DataFrame, cl_stats, lt_stats, out: str, report=print) -> List[str]:
    """Write every plot into ``out``; long-tail results without any many/medium/few value are reported."""
    written = []
    if not cl.empty:
        for (dataset, buffer, method, head), rows in cl.groupby(["dataset", "buffer", "method", "head"]):
            path = os.path.join(out, f"matrix_{_safe(dataset)}_buffer{_safe(buffer)}_{_safe(method)}_{_safe(head)}.png")
            title = plots.title_of(dataset, f"buffer {buffer}", method, display_head(head))
            written.append(plots.save(matrix_figure(list(rows["matrix"]), title), path))
        for dataset in cl_stats["dataset"].unique():
            written.append(plots.save(bars_figure(cl_stats, dataset), os.path.join(out, f"bars_{_safe(dataset)}.png")))
    if lt_stats is not None and not lt_stats.empty:
        for (dataset, ratio), part in lt_stats.groupby(["dataset", "imbalance_ratio"], sort=False):
            if not part["metric"].isin(["Many", "Medium", "Few"]).any():
                report(f"no many/medium/few plot for {dataset}, ratio {ratio}: its results files hold no "
                       f"group accuracies (every group is null)")
                continue
            path = os.path.join(out, f"longtail_{_safe(dataset)}_ratio{_safe(ratio)}.png")
            written.append(plots.save(lt_figure(lt_stats, dataset, ratio), path))
    return written


# ----------------------------------------------------------------------------------------------

def _frames(records: List[dict]) -> Dict[str, pd.DataFrame]:
    by_setting = {"cl": [], "long-tail": []}
    for rec in records:
        by_setting[rec["setting"]].append(rec)
    return {setting: pd.DataFrame(rows) for setting, rows in by_setting.items()}


def _suffixed(path: str, suffix: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}{suffix}{ext}"


class SelectionError(Exception):
    """--select_on validation cannot be done: the message is the one line to print."""


def summarize_part(records: List[dict], report, select_on: Optional[str] = None, plots_dir: Optional[str] = None,
                   latex: Optional[str] = None, title: str = "") -> tuple:
    """Print the tables of one set of runs (full, or partial); returns (numeric rows, Markdown sections)."""
    frames = _frames(records)
    cl, lt = frames["cl"], frames["long-tail"]
    suffix = f" ({title})" if title else ""
    markdown, numeric = [], []
    cl_stats = lt_stats = None
    fixed = fixed_heads()
    ignore = {"classifier"} | head_flag_names()
    if not cl.empty and select_on == "validation":
        validated = cl["val_class_il"].notna()
        if not validated.any():
            report(f"--select_on validation: none of the {title or 'full runs'} has a 'validation' field; they "
                   f"are shown without selection")
        elif not validated.all():
            report(f"left out {int((~validated).sum())} run(s) without a 'validation' field from --select_on "
                   f"validation")
        if validated.any():
            cl = select_on_validation(cl[validated], report)
            ignore |= {k for model in cl["model"].unique() for k in swept_flags(model)}
    if not cl.empty:
        warn_mixed_settings(cl, ["dataset", "buffer", "method", "head"], report)
        warn_unpaired(cl, fixed, ignore, report)
        cl_stats = cl_statistics(cl, fixed)
        numeric.append(cl_stats.assign(setting="continual"))
        for (dataset, buffer), table in cl_tables(cl_stats).items():
            report(f"\n{dataset}, buffer {buffer}{suffix}: mean ± std (n seeds); HEAD - FC: paired mean difference "
                   f"[95% CI] p (n pairs)")
            report(table.to_string())
            markdown.append(f"## {dataset}, buffer {buffer}{suffix}\n\n{to_markdown(table)}\n")
        if latex:
            atomic_write_bytes(latex, to_latex(cl_stats).encode())
            report(f"wrote {latex}")
    elif latex:
        report(f"no LaTeX table{suffix}: no continual-learning runs")
    if not lt.empty:
        warn_mixed_settings(lt, ["dataset", "imbalance_ratio", "method"], report)
        lt_stats = lt_statistics(lt)
        numeric.append(lt_stats.assign(setting="long-tail"))
        for (dataset, ratio), table in lt_tables(lt_stats).items():
            report(f"\nlong-tail {dataset}, ratio {ratio}{suffix}: accuracy mean ± std (n seeds); final epoch (the "
                   f"headline) and best epoch (selected on the test set: optimistic)")
            report(_flat_columns(table).to_string())
            markdown.append(f"## long-tail {dataset}, ratio {ratio}{suffix}\n\n{to_markdown(table)}\n")
    if plots_dir:
        if not plots.available():
            report(f"cannot draw --plots: {plots.MISSING_MATPLOTLIB}")
        else:
            written = draw_plots(cl, cl_stats, lt_stats, plots_dir, report)
            report(f"wrote {len(written)} plots to {plots_dir}")
    return numeric, markdown


def summarize(directory: str, plots_dir: Optional[str] = None, latex: Optional[str] = None,
              select_on: Optional[str] = None, include_partial: bool = False, out=None,
              records: Optional[List[dict]] = None, source: Optional[str] = None) -> int:
    """Print (to ``out``, default stdout) and write the tables into ``directory``; return the number of
    results used.  The results are the files under ``directory``, or ``records`` when given (read from
    elsewhere, e.g. ``read_wandb``; ``source`` names where for the messages).

    Raises ``SelectionError`` when ``select_on`` cannot be done."""
    report = lambda line: print(line, file=out or sys.stdout, flush=True)
    if records is None:
        records = read_directory(directory, report)
    else:
        os.makedirs(directory, exist_ok=True)
    source = source or directory
    full = [r for r in records if not r["partial"]]
    partial = [r for r in records if r["partial"]]
    if partial and not include_partial:
        report(f"left out {len(partial)} partial run(s) (\"partial\": true, e.g. --debug_mode): never mixed with "
               f"full runs; --include_partial summarizes them apart")
    parts = [(full, "", plots_dir, latex)]
    if partial and include_partial:
        parts.append((partial, "partial runs", plots_dir and os.path.join(plots_dir, "partial"),
                      latex and _suffixed(latex, "_partial")))
    parts = [p for p in parts if p[0]]
    if not parts:
        report(f"no usable results files under {directory}" if source == directory else f"no usable results in {source}")
        return 0
    cl_runs = [r for runs, *_ in parts for r in runs if r["setting"] == "cl"]
    if select_on == "validation" and cl_runs and all(math.isnan(r["val_class_il"]) for r in cl_runs):
        raise SelectionError(f"--select_on validation: none of the {len(cl_runs)} continual-learning results files "
                             f"has a 'validation' field (run with --validation PCT)")
    numeric, markdown = [], []
    for runs, title, part_plots, part_latex in parts:
        part_numeric, part_markdown = summarize_part(runs, report, select_on, part_plots, part_latex, title)
        numeric += [frame.assign(partial=bool(title)) for frame in part_numeric]
        markdown += part_markdown
    csv = pd.concat(numeric, ignore_index=True).to_csv(index=False)
    atomic_write_bytes(os.path.join(directory, "summary.csv"), csv.encode())
    atomic_write_bytes(os.path.join(directory, "summary.md"), "\n".join(markdown).encode())
    report(f"\nwrote {os.path.join(directory, 'summary.csv')} and {os.path.join(directory, 'summary.md')}")
    return sum(len(runs) for runs, *_ in parts)


def main(argv: Optional[list] = None, api=None) -> int:
    """The command; ``api`` stands for ``wandb.Api()`` (tests pass an object with the same methods)."""
    from utils.cli import OneLineParser
    p = OneLineParser(prog="python -m utils.summarize", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", nargs="?",
                   help="directory searched recursively for results files (*.json); with --wandb, where the "
                        "tables are written (default results/wandb/ENTITY-PROJECT[-SWEEP])")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT",
                   help="read the results from the finished runs of this wandb project (their summaries, through "
                        "the wandb API) instead of from files: runs spread over machines need no copying")
    p.add_argument("--sweep", metavar="ID", help="with --wandb: only the runs of this sweep")
    p.add_argument("--plots", metavar="OUT", help="also write PNG plots into OUT (needs matplotlib)")
    p.add_argument("--latex", metavar="OUT.tex", help="also write the paper-style table as a LaTeX document")
    p.add_argument("--select_on", choices=("validation",),
                   help="validation: per configuration, keep the hyper-parameters (lr, minibatch_size, the method's "
                        "flags) with the best mean validation Class-IL and report their test accuracy")
    p.add_argument("--include_partial", action="store_true",
                   help="also summarize runs marked partial (debug / smoke runs), apart from the full runs")
    args = p.parse_args(argv)
    records = source = None
    if args.wandb:
        if args.wandb.count("/") != 1 or not all(args.wandb.split("/")):
            p.error(f"--wandb needs ENTITY/PROJECT, got {args.wandb!r}")
        if args.directory is None:
            args.directory = os.path.join("results", "wandb", args.wandb.replace("/", "-")
                                          + (f"-{args.sweep}" if args.sweep else ""))
        source = f"wandb:{args.wandb}" + (f" sweep {args.sweep}" if args.sweep else "")
        try:
            if api is None:
                import wandb
                api = wandb.Api()
            records = read_wandb(api, args.wandb, args.sweep, print)
        except Exception as exc:
            from utils.wandb_logger import one_line
            print(f"{p.prog}: error: cannot read {source}: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
            return 2
    elif args.sweep:
        p.error("--sweep needs --wandb")
    elif args.directory is None:
        p.error("give a results directory, or --wandb ENTITY/PROJECT")
    elif not os.path.isdir(args.directory):
        p.error(f"{args.directory} is not a directory")
    try:
        used = summarize(args.directory, args.plots, args.latex, args.select_on, args.include_partial,
                         records=records, source=source)
    except SelectionError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if used else 1


if __name__ == "__main__":
    sys.exit(main())
