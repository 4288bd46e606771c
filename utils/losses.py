"""Losses shared by the methods."""
import torch
import torch.nn.functional as F


def mask_other_tasks(logits: torch.Tensor, labels: torch.Tensor, task_of_class: torch.Tensor,
                     tasks: torch.Tensor | None = None) -> torch.Tensor:
    """Set every logit outside each sample's own task to -inf (one vectorised masked_fill).

    ``task_of_class`` maps class -> task; a sample's task is that of its label
    unless ``tasks`` gives it explicitly.  ``logits`` (..., K) and ``labels`` (...) may have any
    leading dimensions (the stacked trainer's (N, S, K) outputs of S seeds).
    """
    own = task_of_class[labels] if tasks is None else tasks
    outside = task_of_class != own.unsqueeze(-1)
    return logits.masked_fill(outside, float("-inf"))


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, task_of_class: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes of each sample's own task only (the paper's masked softmax)."""
    return F.cross_entropy(mask_other_tasks(logits, labels, task_of_class), labels)


def present_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A boolean row over the classes: those with a sample in ``labels`` (on the device, no sync)."""
    return torch.zeros(num_classes, dtype=torch.bool, device=labels.device).index_fill_(0, labels, True)


def kept_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes ``keep`` (a boolean row) holds; every label's class must be kept."""
    return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), labels)
