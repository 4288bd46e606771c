"""The project's one plotting style, shared by ``utils.summarize --plots`` and ``utils.summarize.collapse --plots``.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot: no global figure
state, no GUI backend) and are written as PNG atomically.  Each head has one
colour everywhere; axes have a light grid; accuracy axes run from 0 to (just above) 100 so
that differences are never magnified by an auto-zoomed axis.
matplotlib is an optional dependency (the ``plots`` extra): ``available()``
says whether it can be imported, and nothing here imports it before it is used.
"""
from __future__ import annotations

import io
import math
from typing import List, Optional, Sequence

from utils.io import atomic_write_bytes

DPI = 110
HEAD_COLOURS = {"fc": "#4c72b0", "fno": "#dd8452", "etf": "#55a868", "orth": "#c44e52"}
OTHER_COLOURS = ("#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
IDEAL_STYLE = dict(color="black", linestyle="--", linewidth=1.0, alpha=0.7)
ACCURACY_LIMITS = (0.0, 102.0)  # a little headroom above 100%
MISSING_MATPLOTLIB = "matplotlib is not installed (pip install -e '.[plots]')"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def colour(name: str, index: int) -> str:
    """A head's own colour (``name`` is the head, e.g. "FNO"); anything else the index's colour."""
    return HEAD_COLOURS.get(str(name).lower(), OTHER_COLOURS[index % len(OTHER_COLOURS)])


def new_figure(rows: int, cols: int, panel_width: float = 5.0, panel_height: float = 3.6, **subplots):
    """A figure with a ``rows`` x ``cols`` grid of panels; returns (figure, flat list of axes)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel_width * cols, panel_height * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, [ax for row in axes for ax in row]


def style(ax, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple], value_format: str = "%.1f") -> None:
    """Bars of several series side by side in each group, with error bars.

    ``series``: (label, means, errors) per series, one value per group (NaN: no bar).
    """
    width = 0.8 / max(1, len(series))
    for i, (label, means, errors) in enumerate(series):
        x = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        errors = [0.0 if e is None or math.isnan(e) else e for e in errors]
        bars = ax.bar(x, means, width, yerr=errors, capsize=3, label=label, color=colour(label, i))
        ax.bar_label(bars, fmt=value_format, fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, max(1, len(series))), loc="upper left")


def ideal_line(ax, value: float, label: str = "ideal"):
    """A horizontal line at a metric's ideal value."""
    return ax.axhline(value, label=label, **IDEAL_STYLE)


def limits_with(values: List[float], *anchors: float, margin: float = 0.05):
    """(low, high) covering ``values`` and every anchor (e.g. 0 and the ideal value), plus a margin:
    the axis shows the distance to the anchors instead of zooming in on the differences."""
    finite = [v for v in list(values) + list(anchors) if v is not None and math.isfinite(v)]
    low, high = min(finite), max(finite)
    pad = (high - low) * margin if high > low else max(abs(high), 1.0) * margin
    return low - pad, high + pad


def save(fig, path: str) -> str:
    """Write the figure as a PNG atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def title_of(*parts: Optional[str]) -> str:
    return ", ".join(str(p) for p in parts if p not in (None, ""))
