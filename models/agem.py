import torch
import torch.nn.functional as F

from models import register_model
from models.continual_model import ContinualModel
from utils.cli import Flag, binary


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
    (its current code stores a single stream batch instead: ``--agem_stream_batch 1``, which
    stores ``--batch_size`` random samples of each task; reservoir insertion then replaces
    entries only if they exceed the buffer).  The reference batch
    (``--minibatch_size``) is augmented and uses all classes; the stream loss is masked when
    ``--masked_softmax 1``.  The returned loss is the stream loss, as Mammoth's.
    """

    USES_BUFFER = True
    FLAGS = {"agem_stream_batch": Flag(binary, 0, "agem: 1 stores one random batch (--batch_size samples) of each "
                                                  "task, as Mammoth master; 0 buffer_size // n_tasks (the paper)",
                                       metavar="{0,1}")}
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

    SEVERAL_BACKWARDS = "backpropagates the stream and the memory losses separately to compare their gradients"

    @classmethod
    def check_args(cls, args, n_tasks: int, domain_il: bool) -> None:
        super().check_args(args, n_tasks, domain_il)
        if not args.agem_stream_batch and args.buffer_size // n_tasks == 0:
            raise ValueError(f"--model agem stores buffer_size // {n_tasks} (the number of tasks) samples of each "
                             f"task: give --buffer_size >= {n_tasks} (got {args.buffer_size})")

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        # The protocol's number of tasks (task_of_class cannot tell it: on a domain-incremental
        # benchmark every class belongs to task 0).
        self.per_task = args.batch_size if args.agem_stream_batch else args.buffer_size // setting.n_tasks
        self.params = [p for p in net.parameters() if p.requires_grad]

    def end_task(self, task, data):
        pick = torch.randperm(len(data), device=data.device, generator=self.setting.buffer_generator)
        pick = pick[:self.per_task]
        # With buffer_size // n_tasks per task reservoir insertion never replaces an entry: it appends
        # (with --agem_stream_batch 1 it replaces only once n_tasks * batch_size exceeds the buffer).
        x, y = data.take(pick)
        self.buffer.add(examples=x, labels=y)

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
