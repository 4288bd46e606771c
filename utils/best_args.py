"""The reference hyper-parameters (``--load_best_args``): the paper's table, shared by FC and FNO.

``BEST_ARGS[dataset][model][buffer_size]`` holds the flags the authors used;
``minibatch_size`` is the replay batch.  The ``seq-digits`` rows are this
project's own choices for the embedded demo benchmark, not the paper's.
"""
from __future__ import annotations


def _er(lr, mb):
    return {"lr": lr, "minibatch_size": mb}


def _derpp(lr, mb, alpha, beta):
    return {"lr": lr, "minibatch_size": mb, "alpha": alpha, "beta": beta}


BEST_ARGS = {
    "seq-mnist": {
        "er": {200: _er(0.01, 10), 500: _er(0.1, 10), 5120: _er(0.1, 10)},
        "derpp": {200: _derpp(0.03, 128, 0.2, 1.0), 500: _derpp(0.03, 10, 1.0, 0.5),
                  5120: _derpp(0.1, 64, 0.2, 0.5)},
    },
    "seq-cifar10": {
        "er": {200: _er(0.1, 32), 500: _er(0.1, 32), 5120: _er(0.1, 32)},
        "derpp": {200: _derpp(0.03, 32, 0.1, 0.5), 500: _derpp(0.03, 32, 0.2, 0.5),
                  5120: _derpp(0.03, 32, 0.1, 1.0)},
    },
    "seq-cifar100": {
        "er": {200: _er(0.1, 32), 500: _er(0.1, 32), 5120: _er(0.1, 32)},
        "derpp": {b: _derpp(0.03, 32, 0.1, 0.5) for b in (200, 500, 5120)},
    },
    "seq-tinyimg": {
        "er": {200: _er(0.1, 32), 500: _er(0.03, 32), 5120: _er(0.1, 32)},
        "derpp": {200: _derpp(0.03, 32, 0.1, 1.0), 500: _derpp(0.03, 32, 0.2, 0.5),
                  5120: _derpp(0.03, 32, 0.1, 0.5)},
    },
    "seq-digits": {
        "er": {b: _er(0.1, 10) for b in (50, 200, 500)},
        "derpp": {b: _derpp(0.03, 10, 0.2, 1.0) for b in (50, 200, 500)},
    },
}


def best_args(dataset: str, model: str, buffer_size) -> dict:
    """The table's flags, or ``KeyError`` with a message naming what the table holds."""
    table = BEST_ARGS.get(dataset)
    if table is None:
        raise KeyError(f"no best arguments for dataset {dataset!r}; the table covers: {', '.join(BEST_ARGS)}")
    if model not in table:
        raise KeyError(f"no best arguments for model {model!r} on {dataset}; "
                       f"the table covers: {', '.join(table)}")
    if buffer_size not in table[model]:
        raise KeyError(f"no best arguments for buffer size {buffer_size} ({model} on {dataset}); "
                       f"the table covers: {', '.join(map(str, table[model]))}")
    return dict(table[model][buffer_size])
