"""The statistics and tables of a summary: per-configuration means, paired HEAD - FC rows with confidence
intervals and t-tests, the terminal / Markdown tables and the paper-style LaTeX table (see the package's
docstring for what the tables hold)."""
from __future__ import annotations

import json
import math
from typing import Dict, List

import pandas as pd
from scipy import stats as scipy_stats

from backbone.heads import get_head_class, head_names
from models import get_model_class
from utils.registry import UnknownNameError
from utils.summarize.results import CL_METRICS, LT_EPOCHS, LT_METRICS, lt_key

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

def paired_heads() -> set:
    """The registered heads paired against FC: every one but FC, fixed or learnable."""
    return set(head_names()) - {BASELINE_HEAD}


def head_flag_names() -> set:
    """Every flag a registered head declares (e.g. fno_scale): paired runs may differ in these."""
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


# ----------------------------------------------------------------------------------------------
# Tables.

def _benchmark_key(name: str):
    return (BENCHMARK_ORDER.index(name), name) if name in BENCHMARK_ORDER else (len(BENCHMARK_ORDER), name)


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def cl_statistics(frame: pd.DataFrame, paired: set) -> pd.DataFrame:
    """One numeric row per (dataset, buffer, method, row, metric): each head's mean/std/n and each
    ``paired`` head's paired difference from FC (``delta`` True).  ``method`` names one configuration
    but the head (``utils.summarize.configs``), so a pair is two runs that differ in the head alone."""
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
                if head.split()[0] not in paired or BASELINE_HEAD not in per_seed.columns:
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


def fit_width(table: pd.DataFrame, width: int) -> List[pd.DataFrame]:
    """``table`` cut into tables of consecutive columns, each printed at most ``width`` characters wide
    (every part keeps the row labels; a column wider than ``width`` alone is a part of its own)."""
    parts, columns = [], list(table.columns)
    while columns:
        n = 1
        while n < len(columns) and _printed_width(table[columns[:n + 1]]) <= width:
            n += 1
        parts.append(table[columns[:n]])
        columns = columns[n:]
    return parts


def _printed_width(table: pd.DataFrame) -> int:
    return max(len(line) for line in _flat_columns(table).to_string().splitlines())


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
