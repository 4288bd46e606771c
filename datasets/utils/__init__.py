"""Helpers shared by the data readers: short one-line error texts and cleaning up after a failed download."""
from __future__ import annotations

from typing import Callable, Optional

from utils.io import absent_folders, remove_empty_folders

QUOTE_LIMIT = 200  # the most characters of a file's content (or of an error text) that a data error quotes


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` on one line (whitespace runs collapsed), shortened to about ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` shortened to about ``limit`` characters: how a data error shows file content."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def describe_error(exc: BaseException) -> str:
    """One short line: the exception's class (with its module unless built in) and its message."""
    kind = type(exc).__qualname__
    if type(exc).__module__ != "builtins":
        kind = f"{type(exc).__module__}.{kind}"  # zlib.error says more than error
    text = clip(str(exc))
    return f"{kind}: {text}" if text else f"{kind} (no message)"


def attempt_download(download: Callable[[], object], target: str) -> Optional[str]:
    """Call ``download`` (which fills the folder ``target``); ``None`` on success, else the reason in one
    line, after removing the folders on the way to ``target`` that the attempt created and left empty."""
    created = absent_folders(target)
    try:
        download()
    except Exception as exc:  # no network, mirror down, no permission, disk full...
        remove_empty_folders(created)
        return describe_error(exc)
    return None
