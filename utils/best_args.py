"""``--load_best_args``: each method's table of reference hyper-parameters, kept in the method's own file.

``Method.BEST_ARGS[dataset][buffer_size]`` holds the flags to use (buffer size 0 for
methods without a buffer); each table names its source in a comment beside it.  The online protocol
(``--online 1``) has rows of its own, under ``online:<dataset>``.
"""
from __future__ import annotations

from models import get_model_class

ONLINE = "online:"  # the table key of a dataset's online protocol: "online:seq-cifar10"


def best_args(dataset: str, model: str, buffer_size, online: bool = False) -> dict:
    """The table's flags, or ``KeyError`` with a one-line message naming what the table holds."""
    dataset = ONLINE + dataset if online else dataset
    cls = get_model_class(model)
    table = cls.BEST_ARGS
    if not cls.USES_BUFFER:
        buffer_size = 0  # buffer-less methods keep one row per dataset, whatever --buffer_size says
    if not table:
        raise KeyError(f"no best arguments for model {model!r} (none in its table): give its flags explicitly")
    if dataset not in table:
        raise KeyError(f"no best arguments for model {model!r} on {dataset}; the table covers: {', '.join(table)}")
    if buffer_size not in table[dataset]:
        raise KeyError(f"no best arguments for buffer size {buffer_size} ({model} on {dataset}); "
                       f"the table covers: {', '.join(map(str, table[dataset]))}")
    return dict(table[dataset][buffer_size])
