"""``python -m utils.summarize.collapse RESULTS... [--plots OUT]``: the neural-collapse metrics of runs saved
with ``--collapse_metrics 1`` side by side (the last task's, as a table) and across tasks (one figure, a panel
per metric, each metric's ideal value as a line).  The metrics are defined in ``utils.collapse``; see
docs/collapse.md."""
from __future__ import annotations

import os
import sys
from typing import List

from utils.cli import OneLineParser
from utils.collapse import METRICS
from utils.summarize import plots
from utils.summarize.results import ResultsError, load as load_results, run_label


# Each metric's value under (zero-mean) neural collapse; None where there is no single ideal value
# (the own-class response is a positive constant whose size depends on the features' scale).
IDEAL = {"nc1": 0.0, "nc2_global_equinorm": 0.0, "nc2_global_cos_dev": 0.0, "nc2_global_cos_dev_max": 0.0,
         "nc2_origin_equinorm": 0.0, "nc2_origin_cos": 0.0, "nc2_origin_cos_max": 0.0, "nc3_global": 0.0,
         "nc3_origin": 0.0, "margin_own_mean": None, "margin_own_std": 0.0, "margin_other_mean": 0.0,
         "margin_other_std": 0.0, "separation": 1.0, "support_overlap": 0.0}
PANEL_COLUMNS = 4


def load_run(path: str):
    """(label, per-task metric dicts, results) of a results file written with --collapse_metrics 1;
    ``ResultsError`` naming the file otherwise."""
    try:
        results = load_results(path)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    rows = results.get("collapse")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ResultsError(f"{path}: no collapse metrics (run main.py with --collapse_metrics 1)")
    return f"{os.path.basename(path)} ({run_label(results)})", rows, results


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"


def comparison_table(runs) -> str:
    """Metrics of each run's last task side by side (rows: metrics, columns: runs)."""
    header = ["metric"] + [label for label, _, _ in runs]
    rows = [["tasks_seen"] + [str(r[-1].get("tasks_seen", len(r))) for _, r, _ in runs],
            ["class_il"] + [_fmt(res.get("class_il")) for _, _, res in runs]]
    names = [m for m in METRICS if any(m in r[-1] for _, r, _ in runs)]
    rows += [[m] + [_fmt(r[-1].get(m)) for _, r, _ in runs] for m in names]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda row: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


def collapse_figure(runs):
    """One figure, one panel per metric that any run has: every run's value after each task on the same
    axes, the metric's ideal value as a dashed line, and a y-axis from 0 that includes the ideal value
    (not zoomed in on the runs, which would overstate their differences)."""
    from matplotlib.ticker import MaxNLocator  # optional: --plots only
    metrics = [m for m in METRICS if any(m in row for _, rows, _ in runs for row in rows)]
    n_rows = -(-len(metrics) // PANEL_COLUMNS)
    fig, axes = plots.new_figure(n_rows, PANEL_COLUMNS, panel_width=3.6, panel_height=2.6, sharex=True)
    used = set()
    colours = []
    for i, (_, _, results) in enumerate(runs):
        wanted = plots.colour((results.get("args") or {}).get("classifier", ""), i)
        colours.append(wanted if wanted not in used else plots.OTHER_COLOURS[i % len(plots.OTHER_COLOURS)])
        used.add(colours[-1])
    for index, (ax, metric) in enumerate(zip(axes, metrics)):
        values = []
        for (label, rows, _), colour in zip(runs, colours):
            points = [(r.get("tasks_seen", i + 1), r[metric]) for i, r in enumerate(rows) if metric in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=colour, label=label)
                values += [v for _, v in points]
        if IDEAL[metric] is not None:
            plots.ideal_line(ax, IDEAL[metric])
        ax.set_ylim(*plots.limits_with(values, 0.0, IDEAL[metric]))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom_of_column = index >= len(metrics) - PANEL_COLUMNS
        plots.style(ax, metric, "tasks seen" if bottom_of_column else "")
        ax.xaxis.set_tick_params(labelbottom=bottom_of_column)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 4), fontsize="small")
    return fig


def write_plots(runs, out_dir: str) -> List[str]:
    """``out_dir/collapse.png``: the figure of ``collapse_figure``."""
    return [plots.save(collapse_figure(runs), os.path.join(out_dir, "collapse.png"))]


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m utils.summarize.collapse",
                           description="Compare the neural-collapse metrics of runs saved with --collapse_metrics 1.")
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="results JSON files")
    parser.add_argument("--plots", metavar="OUT", help="directory for collapse.png: one panel per metric, every run "
                                                       "on the same axes, each metric's ideal value as a line")
    args = parser.parse_args(argv)
    if args.plots and not plots.available():
        print(f"{parser.prog}: error: --plots needs matplotlib, which is not installed "
              f"(pip install -e '.[plots]')", file=sys.stderr)
        return 2
    try:
        runs = [load_run(path) for path in args.results]
    except ResultsError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(comparison_table(runs))
    if args.plots:
        for path in write_plots(runs, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
