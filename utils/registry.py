"""One registry mechanism for datasets, backbones and models.

Each registry is a plain ``dict`` from name to class, filled by a decorator in
the module that defines the class.  Modules of a registry package are imported
on first lookup (``discover``), so adding a method is one new file and nothing
else, and importing a package does no work beyond defining its registry.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict

from utils.errors import UserError


class UnknownNameError(UserError):
    """A name that is not in a registry; the message lists the valid names."""


def registrar(table: Dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    """Return a decorator ``@register(name)`` that adds a class to ``table``."""

    def register(name: str):
        def add(cls: type) -> type:
            if name in table and table[name] is not cls:
                raise ValueError(f"{kind} name {name!r} is registered twice "
                                 f"({table[name].__module__} and {cls.__module__})")
            table[name] = cls
            cls.NAME = name
            return cls
        return add

    return register


def discover(package: str) -> None:
    """Import every module of ``package`` so that its decorators run."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def lookup(table: Dict[str, type], package: str, kind: str, name: str) -> type:
    discover(package)
    if name not in table:
        raise UnknownNameError(f"unknown {kind} {name!r}; valid choices: {', '.join(sorted(table))}")
    return table[name]


def names(table: Dict[str, type], package: str) -> list:
    discover(package)
    return sorted(table)
