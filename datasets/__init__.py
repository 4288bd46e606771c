"""Continual-learning benchmarks.

Register one with ``@register_dataset("name")`` on a ``ContinualDataset``
subclass in a new module of this package.
"""
from utils.registry import lookup, names, registrar

DATASETS: dict = {}
register_dataset = registrar(DATASETS, "dataset")


def get_dataset_class(name: str) -> type:
    return lookup(DATASETS, "datasets", "dataset", name)


def dataset_names() -> list:
    return names(DATASETS, "datasets")
