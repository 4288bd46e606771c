"""Parser pieces shared by every command (``main.py``, ``main_lt.py``, the grid and the summaries): the one
parser class (one-line errors), the ``Flag`` that methods and heads declare, and value types.  Torch-free, so
that tools parse their command lines without importing torch.

Every type below rejects what it cannot represent exactly (NaN, infinities,
values out of range) at parse time, so a bad flag fails before any training.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

INT64_MAX = 2 ** 63 - 1


@dataclass(frozen=True)
class Flag:
    """A flag a method or head declares in its own file (``FLAGS = {"alpha": Flag(...)}``).

    ``required``: the run needs a value, from the command line or ``--load_best_args``
    (a hyper-parameter with no sensible default).  The parser collects every
    registered class's flags and shows them grouped by the classes that use them.
    """
    type: Callable[[str], Any]
    default: Any = None
    help: str = ""
    required: bool = False
    metavar: Optional[str] = None


class OneLineParser(argparse.ArgumentParser):
    """Errors are one line on stderr and exit code 2.  No abbreviations: ``--checkpoint_d`` (a typo, or a sweep
    key) is refused rather than taken for ``--checkpoint_dir``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def binary(text: str) -> int:
    """0 or 1."""
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")
    return int(text)


def switch(text: str) -> bool:
    """A switch given bare (``--resume``) or with a value, as wandb agents pass it (``--resume=True``)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected nothing, 1/0 or true/false, got {text!r}")


def _number(kind, text: str):
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text[:40]!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite real number (``nan``, ``inf`` and overflowing literals such as ``1e400`` are refused)."""
    return _number(float, text)


def bounded(kind, low=None, high=None, low_open: bool = False):
    """A type for ``kind`` (int or float) within [low, high] (``low_open``: low itself excluded)."""
    def parse(text: str):
        value = _number(kind, text)
        if low is not None and (value <= low if low_open else value < low):
            what = "positive" if low == 0 and low_open else ("non-negative" if low == 0 else f">= {low}")
            raise argparse.ArgumentTypeError(f"expected a {what} value, got {text[:40]!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected at most {high}, got {text[:40]!r}")
        return value
    return parse


def positive(kind, high=None):
    """A finite value > 0 of type ``kind`` (at most ``high`` when given)."""
    return bounded(kind, 0, high, low_open=True)


def non_negative(kind, high=None):
    """A finite value >= 0 of type ``kind`` (at most ``high`` when given)."""
    return bounded(kind, 0, high)


non_negative_int = non_negative(int)
seed = bounded(int, -INT64_MAX - 1, INT64_MAX)  # what torch.manual_seed accepts
momentum = bounded(float, 0, 1)


def comma_list(item_type: Callable[[str], Any] = str, choices=None):
    """The type of one token of a list flag: ``"a,b"`` -> ``[a, b]``, so lists may be given with commas, spaces or
    both (use with ``nargs="+"`` and ``action=Extend``); each item is checked against ``choices``."""
    def parse(text: str) -> list:
        items = [item_type(part.strip()) for part in text.split(",") if part.strip()]
        bad = [item for item in items if choices is not None and item not in choices]
        if bad or not items:
            valid = f"; valid choices: {', '.join(map(str, choices))}" if choices is not None else ""
            raise argparse.ArgumentTypeError(f"invalid item {bad[0] if bad else text!r}{valid}")
        return items
    return parse


class Extend(argparse.Action):
    """Flattens the lists ``comma_list`` returns for each token into one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [item for part in values for item in part])


def type_metavar(parse) -> str:
    """How a flag type's values look in --help when its owner gave no metavar: {0,1}, INT or FLOAT."""
    if parse is binary:
        return "{0,1}"
    for text, name in (("0.5", "FLOAT"), ("1.5", "FLOAT"), ("1", "INT")):
        try:
            parse(text)
            return name
        except Exception:
            pass
    return "VALUE"


def fill_metavars(parser: argparse.ArgumentParser) -> None:
    """Give every typed flag without a metavar or choices the look of its values in --help ({0,1}, INT,
    FLOAT), as main.py's flags show them."""
    for action in parser._actions:
        if action.option_strings and action.type is not None and action.metavar is None and not action.choices:
            action.metavar = type_metavar(action.type)
