"""The paper-style table of a directory of results files: ``python -m utils.summarize DIR [--plots OUT]``.

Continual-learning runs: rows (method, classifier), columns (benchmark, buffer,
Class-IL / Task-IL), cells "mean ± std (n seeds)"; the method is the model
name, with "+M" when the masked softmax was on.  Below the classifiers of a
method, the "FNO - FC" row is a paired comparison: FC and FNO runs with the same
seed share the data order, the initialisation of every shared layer and the
buffer draws, so the per-seed differences d_i = FNO_i - FC_i over the seeds both
have are what is compared: their mean, its 95% confidence interval
mean ± t(0.975, n-1) * sd / sqrt(n), and the two-sided paired t-test's p-value.

Long-tail runs (``"setting": "long-tail"``) get their own table: rows method,
columns (dataset, imbalance ratio, overall / many / medium / few-shot accuracy).

Every ``*.json`` under DIR is read; a file that cannot be read, is not a results
file or lacks a field is reported by name and left out, never averaged in.
The table is printed and written beside the results as ``summary.csv`` (one
numeric row per cell) and ``summary.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import pandas as pd

from utils.flags import OPERATIONAL_FLAGS
from utils.io import atomic_write_bytes

BENCHMARK_ORDER = ("seq-digits", "seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")
METRICS = {"Class-IL": "class_il", "Task-IL": "task_il"}
LT_METRICS = {"Acc": "accuracy", "Many": "many_acc", "Medium": "medium_acc", "Few": "few_acc"}
DELTA = "FNO - FC"
# Arguments that do not change what a run computes, beyond the output and logging flags: the seed varies
# within a cell by design, the model's alias resolves to the model and flags, and --load_best_args
# resolves to the hyper-parameters it sets, which are compared themselves.
NOT_COMPARED = OPERATIONAL_FLAGS | {"seed", "model_name", "load_best_args"}


# ----------------------------------------------------------------------------------------------
# Student's t distribution, from the regularised incomplete beta function (no SciPy needed).

def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz).

    The fraction converges fast for x < (a + 1) / (a + b + 2); above that the
    symmetry I_x(a, b) = 1 - I_{1-x}(b, a) is used.
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300

    def guard(v):
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 1000):
        # Even step, then odd step, of the continued fraction's coefficients.
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        fraction *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    half_tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - half_tail if t > 0 else half_tail


def t_quantile(q: float, df: float) -> float:
    """The t value with P(T <= t) = q, by bisection on ``t_cdf`` (monotone) to machine precision."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = (low + high) / 2.0
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
    return (low + high) / 2.0


def paired_comparison(differences: List[float], level: float = 0.95) -> dict:
    """Mean of paired differences, its ``level`` confidence interval and the paired t-test's p-value."""
    n = len(differences)
    mean = sum(differences) / n if n else math.nan
    out = {"n": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    if n < 2:
        return out
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / se
    out.update(sd=sd, ci_low=mean - half, ci_high=mean + half, p=t_two_sided_p(t, n - 1))
    return out


# ----------------------------------------------------------------------------------------------
# Reading results files.

class BadResults(ValueError):
    """Why a file is left out."""


def _number(results: dict, key: str, where: str = "", optional: bool = False) -> float:
    """A finite number; with ``optional`` an explicit null (e.g. an empty few-shot group) is NaN."""
    value = results.get(key)
    if optional and key in results and value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadResults(f"field {where}{key!r} is missing or not a finite number ({value!r})")
    return float(value)


def _field(args: dict, key: str):
    if args.get(key) is None:
        raise BadResults(f"field 'args.{key}' is missing")
    return args[key]


def _matrix(results: dict, key: str) -> List[list]:
    m = results.get(key)
    if not isinstance(m, list) or not m or not all(isinstance(r, list) for r in m):
        raise BadResults(f"field {key!r} is missing or not a list of rows")
    if any(v is None for v in m[-1]) or not all(v is None or isinstance(v, (int, float)) for r in m for v in r):
        raise BadResults(f"field {key!r} is incomplete (the last row must hold every task's accuracy)")
    return m


def read_record(path: str) -> Tuple[str, dict]:
    """('cl' | 'long-tail', one flat record) from a results file, or ``BadResults``."""
    try:
        with open(path) as f:
            results = json.load(f)
    except OSError as exc:
        raise BadResults(f"cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise BadResults(f"not valid JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("args"), dict):
        raise BadResults("not a results file (no 'args' mapping)")
    args = results["args"]
    identity = {k: v for k, v in args.items() if k not in NOT_COMPARED}
    record = {"path": path, "seed": _field(args, "seed"), "dataset": _field(args, "dataset"), "identity": identity}
    if results.get("setting") == "long-tail":
        record.update(method=_field(args, "method"), imbalance_ratio=_field(args, "imbalance_ratio"))
        # many/medium/few are null when the split has no class in that group
        record.update({label: _number(results, key, optional=key != "accuracy") for label, key in LT_METRICS.items()})
        return "long-tail", record
    record.update(method=str(_field(args, "model")) + ("+M" if args.get("masked_softmax") else ""),
                  classifier=str(_field(args, "classifier")), buffer=_field(args, "buffer_size"),
                  matrix=_matrix(results, "acc_matrix_class_il"))
    _matrix(results, "acc_matrix_task_il")
    record.update({label: _number(results, key) for label, key in METRICS.items()})
    return "cl", record


def load_directory(directory: str, report=print) -> Dict[str, pd.DataFrame]:
    """Every readable results file under ``directory``, as one DataFrame per setting; problems reported."""
    records = {"cl": [], "long-tail": []}
    seen: Dict[tuple, str] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            path = os.path.join(root, name)
            try:
                setting, record = read_record(path)
            except BadResults as exc:
                report(f"skipped {path}: {exc}")
                continue
            key = (setting, json.dumps(record["identity"], sort_keys=True, default=str), record["seed"])
            if key in seen:
                report(f"skipped {path}: the same run (same arguments and seed) as {seen[key]}")
                continue
            seen[key] = path
            records[setting].append(record)
    return {setting: pd.DataFrame(rows) for setting, rows in records.items()}


def warn_mixed_settings(frame: pd.DataFrame, cell: List[str], report=print) -> None:
    """Report cells whose runs differ in anything but the seed: they are averaged together."""
    for key, group in frame.groupby(cell, sort=True):
        identities = group["identity"].tolist()
        differing = sorted(k for k in set().union(*identities) if len({repr(i.get(k)) for i in identities}) > 1)
        if differing:
            report(f"warning: the runs of {dict(zip(cell, key))} differ in {', '.join(differing)}; "
                   f"they are averaged together")


def warn_unpaired(frame: pd.DataFrame, report=print) -> None:
    """Report FC/FNO pairs (same cell and seed) that differ in more than the classifier."""
    for key, group in frame.groupby(["dataset", "buffer", "method", "seed"], sort=True):
        by_head = {row.classifier: row.identity for row in group.itertuples()}
        if "fc" in by_head and "fno" in by_head:
            differing = sorted(k for k in set(by_head["fc"]) | set(by_head["fno"])
                               if k != "classifier" and by_head["fc"].get(k) != by_head["fno"].get(k))
            if differing:
                report(f"warning: the FC and FNO runs of {dict(zip(['dataset', 'buffer', 'method', 'seed'], key))} "
                       f"also differ in {', '.join(differing)}: not a clean paired comparison")


# ----------------------------------------------------------------------------------------------
# Tables.

def _benchmark_key(name: str):
    return (BENCHMARK_ORDER.index(name), name) if name in BENCHMARK_ORDER else (len(BENCHMARK_ORDER), name)


def cl_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """One numeric row per (dataset, buffer, method, row, metric): the classifiers' mean/std/n and the deltas."""
    rows = []
    for (dataset, buffer, method), group in frame.groupby(["dataset", "buffer", "method"], sort=False):
        for label in METRICS:
            for classifier, runs in group.groupby("classifier", sort=True):
                values = runs[label]
                rows.append(dict(dataset=dataset, buffer=buffer, method=method, row=classifier, metric=label,
                                 mean=values.mean(), std=values.std(ddof=1), n=len(values)))
            heads = group.pivot(index="seed", columns="classifier", values=label)
            if {"fc", "fno"} <= set(heads.columns):
                pairs = heads[["fc", "fno"]].dropna()
                stats = paired_comparison((pairs["fno"] - pairs["fc"]).tolist())
                rows.append(dict(dataset=dataset, buffer=buffer, method=method, row=DELTA, metric=label,
                                 mean=stats["mean"], std=stats["sd"], n=stats["n"], ci_low=stats["ci_low"],
                                 ci_high=stats["ci_high"], p=stats["p"]))
    stats = pd.DataFrame(rows, columns=["dataset", "buffer", "method", "row", "metric", "mean", "std", "n",
                                        "ci_low", "ci_high", "p"])
    order = stats["dataset"].map(_benchmark_key)
    return stats.assign(_order=order).sort_values(["_order", "buffer", "method"], kind="stable").drop(columns="_order")


def format_cell(row) -> str:
    if row["row"] == DELTA:
        if row["n"] < 2:
            return f"{row['mean']:+.2f} ({row['n']})"
        p = "p<0.001" if row["p"] < 0.001 else f"p={row['p']:.3f}"
        return f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] {p} ({row['n']})"
    if row["n"] < 2:
        return f"{row['mean']:.2f} ({row['n']})"
    return f"{row['mean']:.2f} ± {row['std']:.2f} ({row['n']})"


def cl_tables(stats: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    """Per benchmark, the display table: rows (method, classifier / FNO - FC), columns (buffer, metric)."""
    tables = {}
    for dataset, part in stats.groupby("dataset", sort=False):
        part = part.assign(cell=part.apply(format_cell, axis=1))
        table = part.pivot_table(index=["method", "row"], columns=["buffer", "metric"], values="cell",
                                 aggfunc="first", sort=False)
        columns = sorted(table.columns, key=lambda c: (c[0], list(METRICS).index(c[1])))
        table = table.reindex(columns=columns, index=sorted(table.index, key=lambda r: (r[0], r[1] == DELTA, r[1])))
        table.columns = pd.MultiIndex.from_tuples([(f"buffer {b}", m) for b, m in columns])
        table.index.names = ["method", "classifier"]
        tables[dataset] = table.fillna("")
    return tables


def lt_table(frame: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Long-tail runs: the numeric statistics and the display table (rows method, columns dataset/ratio/metric)."""
    long = frame.melt(id_vars=["dataset", "imbalance_ratio", "method", "seed"], value_vars=list(LT_METRICS),
                      var_name="metric", value_name="value").dropna(subset=["value"])
    stats = (long.groupby(["dataset", "imbalance_ratio", "method", "metric"], sort=True)["value"]
             .agg(mean="mean", std=lambda v: v.std(ddof=1), n="size").reset_index())
    stats = stats.rename(columns={"method": "row"})
    cells = stats.assign(cell=stats.apply(format_cell, axis=1))
    table = cells.pivot_table(index="row", columns=["dataset", "imbalance_ratio", "metric"], values="cell",
                              aggfunc="first")
    columns = sorted(table.columns, key=lambda c: (c[0], c[1], list(LT_METRICS).index(c[2])))
    table = table.reindex(columns=columns)
    table.columns = pd.MultiIndex.from_tuples([(d, f"ratio {r}", m) for d, r, m in columns])
    table.index.name = "method"
    return stats, table.fillna("")


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
    out.columns = [" ".join(str(v) for v in c) for c in table.columns]
    return out


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: files only).

def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(text))


def mean_matrix(matrices: List[list]) -> "np.ndarray":
    """The element-wise mean of accuracy matrices of one shape; NaN where no run has a value (unseen tasks)."""
    import numpy as np
    stack = np.array([[[math.nan if v is None else v for v in row] for row in m] for m in matrices], dtype=float)
    counts = (~np.isnan(stack)).sum(axis=0)
    return np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)


def plot_group(record_rows: pd.DataFrame, title: str, path: str) -> None:
    """The mean Class-IL accuracy matrix as a heatmap, and each task's accuracy across the task sequence."""
    import numpy as np
    import matplotlib.pyplot as plt
    shapes = {(len(m), len(m[0])) for m in record_rows["matrix"]}
    matrices = [m for m in record_rows["matrix"] if (len(m), len(m[0])) == max(shapes)]
    acc = mean_matrix(matrices)
    n_rows, n_tasks = acc.shape
    fig, (ax_heat, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.5))
    image = ax_heat.imshow(acc, vmin=0, vmax=100, cmap="viridis")
    for t in range(n_rows):
        for j in range(n_tasks):
            if not np.isnan(acc[t, j]):
                ax_heat.text(j, t, f"{acc[t, j]:.0f}", ha="center", va="center", fontsize=8,
                             color="white" if acc[t, j] < 60 else "black")
    ax_heat.set_xticks(range(n_tasks), [str(j + 1) for j in range(n_tasks)])
    ax_heat.set_yticks(range(n_rows), [str(n_tasks - n_rows + t + 1) for t in range(n_rows)])
    ax_heat.set_xlabel("evaluated on task")
    ax_heat.set_ylabel("after training task")
    ax_heat.set_title("Class-IL accuracy matrix (mean, %)")
    fig.colorbar(image, ax=ax_heat, fraction=0.046, pad=0.04)
    after = np.arange(n_tasks - n_rows + 1, n_tasks + 1)
    for j in range(n_tasks):
        seen = ~np.isnan(acc[:, j])
        if seen.any():
            ax_curve.plot(after[seen], acc[seen, j], marker="o", markersize=3, linewidth=1, label=f"task {j + 1}")
    ax_curve.plot(after, np.nanmean(acc, axis=1), color="black", linewidth=2.5, label="mean of seen")
    ax_curve.set_xticks(after)
    ax_curve.set_xlabel("after training task")
    ax_curve.set_ylabel("Class-IL accuracy (%)")
    ax_curve.set_ylim(0, 102)
    ax_curve.grid(alpha=0.3)
    ax_curve.set_title("per-task accuracy over the sequence")
    ax_curve.legend(fontsize=7, ncol=2 if n_tasks > 5 else 1, loc="lower left")
    fig.suptitle(f"{title}  (n={len(matrices)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(stats: pd.DataFrame, dataset: str, path: str) -> None:
    """FC vs FNO (and any other head) per method and buffer, mean with std error bars, Class-IL and Task-IL."""
    import numpy as np
    import matplotlib.pyplot as plt
    part = stats[(stats["dataset"] == dataset) & (stats["row"] != DELTA)]
    groups = list(dict.fromkeys(zip(part["method"], part["buffer"])))
    heads = sorted(part["row"].unique())
    width = 0.8 / len(heads)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(max(6, 1.6 * len(groups)) * len(METRICS) / 1.5, 4.2))
    for ax, metric in zip(np.atleast_1d(axes), METRICS):
        for h, head in enumerate(heads):
            sel = part[(part["metric"] == metric) & (part["row"] == head)].set_index(["method", "buffer"])
            means = [sel["mean"].get(g, np.nan) for g in groups]
            errors = [np.nan_to_num(sel["std"].get(g, np.nan)) for g in groups]
            x = np.arange(len(groups)) + (h - (len(heads) - 1) / 2) * width
            bars = ax.bar(x, means, width, yerr=errors, capsize=3, label=head.upper())
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(groups)), [f"{m}\nbuffer {b}" for m, b in groups])
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.set_ylim(0, 115)
        ax.set_title(f"{dataset}: {metric} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", ncol=len(heads), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_plots(frame: pd.DataFrame, stats: pd.DataFrame, out: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    os.makedirs(out, exist_ok=True)
    written = []
    for (dataset, buffer, method, classifier), rows in frame.groupby(["dataset", "buffer", "method", "classifier"]):
        path = os.path.join(out, f"matrix_{_safe(dataset)}_buffer{_safe(buffer)}_{_safe(method)}_{_safe(classifier)}.png")
        plot_group(rows, f"{dataset}, buffer {buffer}, {method}, {classifier.upper()}", path)
        written.append(path)
    for dataset in stats["dataset"].unique():
        path = os.path.join(out, f"bars_{_safe(dataset)}.png")
        plot_bars(stats, dataset, path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------

def summarize(directory: str, plots: Optional[str] = None, out=None) -> int:
    """Print (to ``out``, default stdout) and write the tables and plots; return the number of results files used."""
    report = lambda line: print(line, file=out or sys.stdout, flush=True)
    frames = load_directory(directory, report)
    cl, lt = frames["cl"], frames["long-tail"]
    if cl.empty and lt.empty:
        report(f"no usable results files under {directory}")
        return 0
    markdown, numeric = [], []
    if not cl.empty:
        warn_mixed_settings(cl, ["dataset", "buffer", "method", "classifier"], report)
        warn_unpaired(cl, report)
        stats = cl_statistics(cl)
        numeric.append(stats.assign(setting="continual"))
        for dataset, table in cl_tables(stats).items():
            report(f"\n{dataset}: mean ± std (n seeds); {DELTA}: paired mean difference [95% CI] p (n pairs)")
            report(_flat_columns(table).to_string())
            markdown.append(f"## {dataset}\n\n{to_markdown(table)}\n")
    if not lt.empty:
        warn_mixed_settings(lt, ["dataset", "imbalance_ratio", "method"], report)
        lt_stats, table = lt_table(lt)
        numeric.append(lt_stats.assign(setting="long-tail"))
        report("\nlong-tail: accuracy mean ± std (n seeds)")
        report(_flat_columns(table).to_string())
        markdown.append(f"## long-tail\n\n{to_markdown(table)}\n")
    csv = pd.concat(numeric, ignore_index=True).to_csv(index=False)
    atomic_write_bytes(os.path.join(directory, "summary.csv"), csv.encode())
    atomic_write_bytes(os.path.join(directory, "summary.md"), "\n".join(markdown).encode())
    report(f"\nwrote {os.path.join(directory, 'summary.csv')} and {os.path.join(directory, 'summary.md')}")
    if plots and not cl.empty:
        try:
            import matplotlib  # noqa: F401  (an optional dependency: the 'plots' extra)
        except ImportError:
            report("cannot draw --plots: matplotlib is not installed (pip install -e '.[plots]')")
            return len(cl) + len(lt)
        written = draw_plots(cl, stats, plots)
        report(f"wrote {len(written)} plots to {plots}")
    return len(cl) + len(lt)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.summarize", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="directory searched recursively for results files (*.json)")
    p.add_argument("--plots", metavar="OUT", help="also write PNG plots into OUT")
    args = p.parse_args(argv)
    if not os.path.isdir(args.directory):
        p.error(f"{args.directory} is not a directory")
    return 0 if summarize(args.directory, args.plots) else 1


if __name__ == "__main__":
    sys.exit(main())
