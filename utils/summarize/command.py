"""``python -m utils.summarize``: read results (files or wandb), print and write the tables, plots and LaTeX."""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Optional

import pandas as pd

from utils.cli import OneLineParser
from utils.errors import UserError
from utils.io import atomic_write_bytes
from utils.summarize import plots
from utils.summarize.figures import draw_plots
from utils.summarize.configs import ConfigurationError, configurations, filled_identity
from utils.summarize.results import CL_METRICS, LT_EPOCHS, LT_METRICS, read_directory, read_wandb
from utils.summarize.tables import (cl_statistics, cl_tables, fit_width, head_flag_names, lt_statistics, lt_tables,
                                    paired_heads, select_on_validation, swept_flags, to_latex, to_markdown,
                                    _flat_columns)
from utils.wandb_logger import one_line

TERMINAL_WIDTH = 120  # the printed tables are cut into parts no wider than this
DESCRIPTION = "The tables of a directory of results files: python -m utils.summarize DIR [--plots OUT] [--latex OUT.tex]."


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


class OutputError(Exception):
    """The tables cannot be written: the message is the one line to print."""


def _print_table(report, table: pd.DataFrame, columns: Optional[List[str]]) -> None:
    """The table, only ``columns`` when given, cut into parts that fit the terminal."""
    if columns:
        table = table[[c for c in table.columns if (c if isinstance(c, str) else " ".join(c)) in columns]]
    for i, part in enumerate(fit_width(table, TERMINAL_WIDTH)):
        report(("" if i == 0 else "\n") + _flat_columns(part).to_string())


def summarize_part(records: List[dict], report, select_on: Optional[str] = None, plots_dir: Optional[str] = None,
                   latex: Optional[str] = None, title: str = "", group_by: Optional[List[str]] = None,
                   ignore: tuple = (), columns: Optional[List[str]] = None, later: Optional[list] = None) -> tuple:
    """Print the tables of one set of runs (full, or partial); returns (numeric rows, Markdown sections).
    ``group_by`` / ``ignore``: the flags that define a configuration (``utils.summarize.configs``);
    ``columns``: the metrics printed (all are written).  The LaTeX and plots are appended to ``later`` as
    (where, write) pairs, written after the tables."""
    later = [] if later is None else later
    frames = _frames(records)
    cl, lt = frames["cl"], frames["long-tail"]
    suffix = f" ({title})" if title else ""
    markdown, numeric = [], []
    cl_stats = lt_stats = None
    head_keys = {"classifier"} | head_flag_names()
    ignore = set(ignore)
    if not cl.empty:
        cl = cl.assign(identity=[filled_identity(i) for i in cl["identity"]])
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
            ignore |= {k for model in cl["model"].unique() for k in swept_flags(model)}  # chosen per head
    if not cl.empty:
        cl = configurations(cl, ["dataset", "buffer", "method"], head_keys, group_by, ignore)
        cl_stats = cl_statistics(cl, paired_heads())
        numeric.append(cl_stats.assign(setting="continual"))
        for (dataset, buffer), table in cl_tables(cl_stats).items():
            report(f"\n{dataset}, buffer {buffer}{suffix}: mean ± std (n seeds); HEAD - FC: paired mean difference "
                   f"[95% CI] p (n pairs)")
            _print_table(report, table, columns)
            markdown.append(f"## {dataset}, buffer {buffer}{suffix}\n\n{to_markdown(table)}\n")
        if latex:  # written after the tables (summarize): a bad --latex path never costs them
            later.append((latex, lambda stats=cl_stats: (atomic_write_bytes(latex, to_latex(stats).encode()),
                                                        report(f"wrote {latex}"))))
    elif latex:
        report(f"no LaTeX table{suffix}: no continual-learning runs")
    if not lt.empty:
        lt = configurations(lt, ["dataset", "imbalance_ratio", "method"], (), group_by, ignore)
        lt_stats = lt_statistics(lt)
        numeric.append(lt_stats.assign(setting="long-tail"))
        for (dataset, ratio), table in lt_tables(lt_stats).items():
            report(f"\nlong-tail {dataset}, ratio {ratio}{suffix}: accuracy mean ± std (n seeds); final epoch (the "
                   f"headline) and best epoch (selected on the test set: optimistic)")
            _print_table(report, table, columns)
            markdown.append(f"## long-tail {dataset}, ratio {ratio}{suffix}\n\n{to_markdown(table)}\n")
    if plots_dir:
        if not plots.available():
            report(f"cannot draw --plots: {plots.MISSING_MATPLOTLIB}")
        else:
            later.append((plots_dir, lambda cl=cl, cl_stats=cl_stats, lt_stats=lt_stats: report(
                f"wrote {len(draw_plots(cl, cl_stats, lt_stats, plots_dir, report))} plots to {plots_dir}")))
    return numeric, markdown


def summarize(directory: str, plots_dir: Optional[str] = None, latex: Optional[str] = None,
              select_on: Optional[str] = None, include_partial: bool = False, out=None,
              records: Optional[List[dict]] = None, source: Optional[str] = None,
              group_by: Optional[List[str]] = None, ignore: tuple = (), columns: Optional[List[str]] = None) -> int:
    """Print (to ``out``, default stdout) and write the tables into ``directory``; return the number of
    results used.  The results are the files under ``directory``, or ``records`` when given (read from
    elsewhere, e.g. ``read_wandb``; ``source`` names where for the messages).

    Raises ``SelectionError`` when ``select_on`` cannot be done, ``ConfigurationError`` when a seed appears
    twice in one configuration, ``OutputError`` when the tables cannot be written."""
    stream = out or sys.stdout
    report = lambda line: print(printable(line, stream), file=stream, flush=True)
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
    numeric, markdown, later = [], [], []
    for runs, title, part_plots, part_latex in parts:
        part_numeric, part_markdown = summarize_part(runs, report, select_on, part_plots, part_latex, title,
                                                      group_by, ignore, columns, later)
        numeric += [frame.assign(partial=bool(title)) for frame in part_numeric]
        markdown += part_markdown
    csv = no_formulas(pd.concat(numeric, ignore_index=True)).to_csv(index=False)
    for name, text in (("summary.csv", csv), ("summary.md", "\n".join(markdown))):
        write_output(os.path.join(directory, name), lambda path=os.path.join(directory, name), text=text:
                     atomic_write_bytes(path, text.encode()), fatal=True)
    report(f"\nwrote {os.path.join(directory, 'summary.csv')} and {os.path.join(directory, 'summary.md')}")
    for where, write in later:
        write_output(where, write, report=report)
    return sum(len(runs) for runs, *_ in parts)


def _names(text: str) -> list:
    return [name.strip() for name in text.split(",") if name.strip()]


def _lt_columns() -> list:
    return [(epoch, metric) for epoch in LT_EPOCHS for metric in LT_METRICS]


def write_output(where: str, write, fatal: bool = False, report=print) -> None:
    """Run ``write()``; an error is one line (``OutputError`` when ``fatal``, else reported and passed over)."""
    try:
        write()
    except (OSError, UserError, ValueError) as exc:
        line = f"cannot write {where}: {getattr(exc, 'strerror', None) or one_line(exc)}"
        if fatal:
            raise OutputError(line) from None
        report(line)


def no_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) quoted with
    ``'``: a results file's words (a dataset or method name) reach summary.csv."""
    def quoted(value):
        return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    return frame.apply(lambda column: column if pd.api.types.is_numeric_dtype(column) else column.map(quoted))


def printable(line: str, stream) -> str:
    """``line`` as ``stream`` can encode it (an ASCII-only terminal gets ``+-`` for ``±``)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        line.encode(encoding)
        return line
    except (UnicodeEncodeError, LookupError):
        return line.replace("±", "+-").encode("ascii", errors="replace").decode("ascii")


def main(argv: Optional[list] = None, api=None) -> int:
    """The command; ``api`` stands for ``wandb.Api()`` (tests pass an object with the same methods).
    Ctrl-C is one line and exit code 130 (files are written atomically: none is left half-written)."""
    try:
        return command(argv, api)
    except KeyboardInterrupt:
        print("python -m utils.summarize: interrupted", file=sys.stderr)
        return 130


def command(argv: Optional[list], api) -> int:
    p = OneLineParser(prog="python -m utils.summarize", description=DESCRIPTION)
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
    p.add_argument("--group_by", type=_names, metavar="FLAG,...",
                   help="only these flags (and the benchmark, buffer, method and head) define a configuration; "
                        "default: every flag but the seed and the operational ones")
    p.add_argument("--ignore", type=_names, metavar="FLAG,...", default=(),
                   help="flags that do not define a configuration: runs differing only in them share a cell "
                        "(a seed may still appear only once per cell)")
    p.add_argument("--columns", type=_names, metavar="METRIC,...",
                   help="print only these metrics (e.g. Class-IL,Task-IL); all are written to summary.csv/.md")
    args = p.parse_args(argv)
    known = set(CL_METRICS) | {" ".join(c) for c in _lt_columns()}
    if args.columns and set(args.columns) - known:
        p.error(f"--columns {','.join(sorted(set(args.columns) - known))}: not a metric "
                f"(valid: {', '.join(sorted(known))})")
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
                         records=records, source=source, group_by=args.group_by, ignore=args.ignore,
                         columns=args.columns)
    except (SelectionError, ConfigurationError, OutputError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if used else 1
