"""The figures of a summary (``--plots OUT``), in the shared style of ``utils.summarize.plots``: mean accuracy
matrices, Class-IL / Task-IL bars per benchmark, long-tail shot-group bars."""
from __future__ import annotations

import math
import os
import re
from typing import List

import numpy as np
import pandas as pd

from utils.summarize import plots
from utils.summarize.results import LT_EPOCHS, LT_METRICS
from utils.summarize.tables import LATEX_METRICS, display_head, head_order


# ----------------------------------------------------------------------------------------------
# Plots (utils.summarize.plots: the shared style).

def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(text))


def mean_matrix(matrices: List[list]):
    """The element-wise mean of accuracy matrices of one shape; NaN where no run has a value (unseen tasks)."""
    stack = np.array([[[math.nan if v is None else v for v in row] for row in m] for m in matrices], dtype=float)
    counts = (~np.isnan(stack)).sum(axis=0)
    return np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)


def matrix_figure(matrices: List[list], title: str):
    """The mean Class-IL accuracy matrix as a heatmap, and each task's accuracy across the task sequence."""
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
