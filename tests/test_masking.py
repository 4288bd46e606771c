import torch
import torch.nn.functional as F

from utils.losses import mask_other_tasks, masked_cross_entropy


def test_mask_keeps_exactly_the_own_task_classes():
    task_of_class = torch.arange(10) // 2
    logits = torch.randn(6, 10)
    labels = torch.tensor([0, 3, 5, 9, 2, 7])
    masked = mask_other_tasks(logits, labels, task_of_class)
    for i, y in enumerate(labels.tolist()):
        own = {2 * (y // 2), 2 * (y // 2) + 1}
        for c in range(10):
            if c in own:
                assert masked[i, c] == logits[i, c]
            else:
                assert masked[i, c] == float("-inf")


def test_masked_cross_entropy_equals_softmax_over_own_task():
    task_of_class = torch.arange(12) // 3
    logits = torch.randn(8, 12, dtype=torch.float64)
    labels = torch.randint(0, 12, (8,))
    expected = []
    for i, y in enumerate(labels.tolist()):
        lo = 3 * (y // 3)
        expected.append(F.cross_entropy(logits[i, lo:lo + 3].unsqueeze(0), torch.tensor([y - lo])))
    assert torch.allclose(masked_cross_entropy(logits, labels, task_of_class), torch.stack(expected).mean())


def test_masked_loss_gives_no_gradient_to_other_tasks_logits():
    task_of_class = torch.arange(10) // 2
    logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    masked_cross_entropy(logits, labels, task_of_class).backward()
    assert (logits.grad[:2, 2:] == 0).all() and (logits.grad[2:, :2] == 0).all()
    assert (logits.grad[2:, 4:] == 0).all()
    assert (logits.grad[:2, :2] != 0).all()


def test_explicit_tasks_override_labels():
    task_of_class = torch.arange(4) // 2
    logits = torch.zeros(1, 4)
    out = mask_other_tasks(logits, torch.tensor([0]), task_of_class, tasks=torch.tensor([1]))
    assert torch.isinf(out[0, :2]).all() and (out[0, 2:] == 0).all()
