"""Long-tail accuracies: overall and many / medium / few from per-class test hits, and how they are shown."""
from __future__ import annotations

from typing import Sequence

import torch

GROUP_KEYS = ("accuracy", "many_acc", "medium_acc", "few_acc")


def long_tail_metrics(hits, counts, groups: dict) -> dict:
    """Accuracies in percent from per-class test hits and test counts (tensors or lists).

    ``accuracy`` is over all test images; ``many_acc`` / ``medium_acc`` /
    ``few_acc`` are the mean per-class accuracy over the classes of each of
    ``groups`` (``shot_groups``; ``None`` when a group has no class with test
    images); ``per_class_acc`` is ``None`` for classes without test images.
    """
    hits = torch.as_tensor(hits, dtype=torch.float64).cpu()
    counts = torch.as_tensor(counts, dtype=torch.float64).cpu()
    per_class = [100 * h / n if n > 0 else None for h, n in zip(hits.tolist(), counts.tolist())]
    result = {"accuracy": 100 * float(hits.sum() / counts.sum()) if counts.sum() > 0 else None}
    for group, classes in groups.items():
        values = [per_class[c] for c in classes if per_class[c] is not None]
        result[f"{group}_acc"] = sum(values) / len(values) if values else None
    result["per_class_acc"] = per_class
    return result


def format_metrics(m: dict) -> str:
    show = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    return (f"accuracy {show(m['accuracy'])} | many {show(m['many_acc'])} | medium {show(m['medium_acc'])}"
            f" | few {show(m['few_acc'])}")


def best_index(per_epoch: Sequence[dict]) -> int:
    """The evaluated epoch with the highest accuracy; ties go to the later epoch, as the authors' ">= best"."""
    return max(range(len(per_epoch)), key=lambda i: (per_epoch[i]["accuracy"], i))
