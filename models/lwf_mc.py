import copy

import torch
import torch.nn.functional as F

from datasets import get_dataset_class
from models import register_model
from models.continual_model import ContinualModel
from utils.cli import Flag, non_negative
from utils.errors import UserError


@register_model("lwf_mc")
class LwFMC(ContinualModel):
    """LwF.MC (the multi-class Learning without Forgetting of iCaRL, Rebuffi et al., CVPR 2017),
    as Mammoth's ``lwf_mc``.

    Every class seen so far has its own sigmoid, trained with binary cross-entropy: on each
    stream batch the targets are the previous model's sigmoid outputs for the classes of
    earlier tasks (distillation) and one-hot labels for the current task's classes; the
    classes of later tasks are left out.  The previous model is a frozen copy of the network
    taken at the end of each task (kept in eval mode, and in checkpoints).  Prediction, like
    Mammoth's evaluation, is the argmax over the classes seen so far: the later classes'
    outputs are never trained.  ``--wd_reg`` adds ``wd_reg * sum(theta^2)`` to the loss and
    ``--optim_wd`` is the optimizer's weight decay, both as in Mammoth.  There is no softmax,
    so ``--masked_softmax 1`` is refused.
    """

    FLAGS = {
        "wd_reg": Flag(non_negative(float), 0.0, "L2 penalty on the parameters added to the loss (Mammoth's lwf_mc)"),
        "optim_wd": Flag(non_negative(float), 0.0, "SGD weight decay (Mammoth's --optim_wd)"),
    }
    # --load_best_args: dataset -> 0 (no buffer) -> flags.
    # seq-cifar100: Mammoth's models/config/lwf_mc.yaml (the X-DER paper's protocol: 50 epochs, lr decayed at
    #   35 and 45); seq-mnist, seq-cifar10, seq-tinyimg: none published for LwF.MC (Mammoth's
    #   utils/best_args.py has rows for lwf, a different method: softmax distillation with a temperature).
    # seq-digits: this project's own choice (a small sweep, see tests/test_methods_a.py's module docstring).
    BEST_ARGS = {
        "seq-cifar100": {0: dict(lr=0.03, optim_wd=5e-4)},
        "seq-digits": {0: dict(lr=0.3)},
    }

    def __init__(self, net, args, setting):
        if args.masked_softmax:
            raise UserError("--model lwf_mc trains one sigmoid per class with binary cross-entropy and has no "
                            "softmax to mask: use --masked_softmax 0")
        if getattr(get_dataset_class(args.dataset), "DOMAIN_IL", False):
            raise UserError(f"--model lwf_mc learns new classes task by task (class- and task-incremental "
                            f"benchmarks); {args.dataset} repeats the same classes in every task")
        super().__init__(net, args, setting)
        self.old_net = copy.deepcopy(net).requires_grad_(False).eval()
        self.columns = torch.arange(len(setting.task_of_class), device=setting.device)  # seen classes (per task)
        self.old_column = None            # which of them belong to earlier tasks

    def build_optimizer(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.args.lr, weight_decay=self.args.optim_wd)

    def train(self, mode: bool = True):
        super().train(mode)
        self.old_net.eval()  # the previous model's batch-norm statistics stay as they were
        return self

    def forward(self, x):
        """Logits with the classes of later tasks at -inf: the prediction is over the seen classes."""
        unseen = self.setting.task_of_class > self.current_task
        return self.net(x).masked_fill(unseen, float("-inf"))

    def begin_task(self, task, data):
        task_of_class = self.setting.task_of_class
        self.columns = torch.nonzero(task_of_class <= task).flatten()  # once per task
        self.old_column = task_of_class[self.columns] < task

    def end_task(self, task, data):
        plain = getattr(self.net, "_orig_mod", self.net)  # the plain module when --compile wrapped it
        self.old_net.load_state_dict(plain.state_dict())

    def targets(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The old model's sigmoids for earlier tasks' classes, one-hot labels for the current task's."""
        one_hot = (labels.unsqueeze(1) == self.columns).float()  # over the seen classes only
        if self.current_task == 0:
            return one_hot
        with torch.no_grad():
            old = torch.sigmoid(self.old_net(inputs)[:, self.columns].float())
        return torch.where(self.old_column, old, one_hot)

    def lwf_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = self.targets(inputs, labels)
        loss = F.binary_cross_entropy_with_logits(self.net(inputs)[:, self.columns], targets)
        if self.args.wd_reg:
            loss = loss + self.args.wd_reg * sum(torch.sum(p ** 2) for p in self.net.parameters())
        return loss

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.lwf_loss(inputs, labels))
        self.opt.step()
        return loss
