import torch
import torch.nn.functional as F

from datasets import get_dataset_class
from models import register_model
from models.continual_model import ContinualModel
from utils.errors import UserError


def flat_grad(params: list) -> torch.Tensor:
    """The parameters' gradients as one vector (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def project(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's update: ``grad - (grad.ref / ref.ref) ref`` when ``grad.ref < 0``, else ``grad`` unchanged.

    The test is a ``torch.where`` on the device, so the step never waits for the host.
    """
    dot = torch.dot(grad, ref)
    # dot < 0 implies ref != 0; the clamp only keeps the unused branch finite when ref = 0
    coef = torch.where(dot < 0, dot / torch.dot(ref, ref).clamp_min(torch.finfo(ref.dtype).tiny), 0.0)
    return grad - coef * ref


@register_model("agem")
class AGem(ContinualModel):
    """A-GEM (Chaudhry et al., ICLR 2019): the stream gradient g is projected when it conflicts
    with the reference gradient r of a random buffer batch (g.r < 0), so that the step does
    not increase the buffer's loss to first order; otherwise g is used as it is.

    The episodic memory gets ``buffer_size // n_tasks`` randomly chosen (non-augmented) training
    samples of each task at the task's end, as in the paper and Mammoth's original ``end_task``
    (its current code stores a single stream batch instead).  The reference batch
    (``--minibatch_size``) is augmented and uses all classes; the stream loss is masked when
    ``--masked_softmax 1``.  The returned loss is the stream loss, as Mammoth's.
    """

    USES_BUFFER = True
    NEEDS_BOUNDARIES = True  # stores the task's samples at its end
    # --load_best_args: dataset -> buffer size -> flags.
    # seq-mnist, seq-cifar10, seq-tinyimg, perm-mnist, rot-mnist: Mammoth's utils/best_args.py (the DER
    #   paper, Buzzega et al., NeurIPS 2020, appendix); seq-cifar100: none published.
    # seq-digits: this project's own choice (a small sweep, see tests/test_methods_a.py's module docstring).
    BEST_ARGS = {
        "seq-mnist": {b: dict(lr=0.1, minibatch_size=128) for b in (200, 500, 5120)},
        "seq-cifar10": {b: dict(lr=0.03, minibatch_size=32) for b in (200, 500, 5120)},
        "seq-tinyimg": {b: dict(lr=0.01, minibatch_size=32) for b in (200, 500, 5120)},
        "perm-mnist": {b: dict(lr=0.1, minibatch_size=128) for b in (200, 500, 5120)},
        "rot-mnist": {200: dict(lr=0.1, minibatch_size=128), 500: dict(lr=0.3, minibatch_size=128),
                      5120: dict(lr=0.3, minibatch_size=128)},
        "seq-digits": {b: dict(lr=0.01, minibatch_size=64) for b in (50, 200, 500)},
    }

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        # The protocol's number of tasks (task_of_class cannot tell it: on a domain-incremental
        # benchmark every class belongs to task 0).
        n_tasks = get_dataset_class(args.dataset).N_TASKS
        self.per_task = args.buffer_size // n_tasks
        if self.per_task == 0:
            raise UserError(f"--model agem stores buffer_size // {n_tasks} (the number of tasks) samples of each "
                            f"task: give --buffer_size >= {n_tasks} (got {args.buffer_size})")
        self.params = [p for p in net.parameters() if p.requires_grad]

    def end_task(self, task, data):
        pick = torch.randperm(len(data), device=data.y.device, generator=self.setting.buffer_generator)
        pick = pick[:self.per_task]
        # The buffer holds at most n_tasks * per_task <= buffer_size samples, so reservoir insertion
        # never replaces one: it simply appends.
        self.buffer.add(examples=data.x[pick], labels=data.y[pick])

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.stream_loss(self.net(inputs), labels))
        if not self.buffer.is_empty():
            grad = flat_grad(self.params)
            self.opt.zero_grad(set_to_none=True)
            buf_x, buf_y = self.buffer.sample(self.args.minibatch_size, "examples", "labels")
            self.backward(lambda: F.cross_entropy(self.net(self.setting.augment(buf_x)), buf_y))
            update = project(grad, flat_grad(self.params))
            for p, g in zip(self.params, update.split([p.numel() for p in self.params])):
                p.grad = g.view_as(p)
        self.opt.step()
        return loss
