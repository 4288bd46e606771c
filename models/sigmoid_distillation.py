"""What iCaRL and LwF.MC share: a sigmoid per seen class, distilled from a frozen copy of the previous network."""
import copy

import torch
import torch.nn.functional as F

from models.continual_model import ContinualModel
from utils.cli import Flag, non_negative


class SigmoidDistillation(ContinualModel):
    """Binary cross-entropy over the classes seen so far (``columns``, set at each task's start); the targets
    are one-hot labels for the current task's classes and the previous network's sigmoid outputs for earlier
    tasks' classes (``old_column``).  The previous network is a frozen copy taken at each task's end, kept in
    eval mode (so its batch-norm statistics stay as they were) and in the state dict (checkpoints).  The
    optimizer is SGD with Mammoth's ``--optim_wd`` weight decay."""

    NEEDS_BOUNDARIES = True  # the seen columns and the frozen previous network change at task boundaries
    FLAGS = {"optim_wd": Flag(non_negative(float), 0.0, "SGD weight decay (Mammoth's --optim_wd)")}

    def __init__(self, net, args, setting):
        super().__init__(net, args, setting)
        num_classes = len(setting.task_of_class)
        self.old_net = copy.deepcopy(net).requires_grad_(False).eval()
        self.columns = torch.arange(num_classes, device=setting.device)  # the classes seen so far (per task)
        self.old_column = torch.zeros(num_classes, dtype=torch.bool, device=setting.device)  # earlier tasks'

    def build_optimizer(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.args.lr, weight_decay=self.args.optim_wd)

    def train(self, mode: bool = True):
        super().train(mode)
        self.old_net.eval()
        return self

    def begin_task(self, task, data):
        task_of_class = self.setting.task_of_class
        self.columns = torch.nonzero(task_of_class <= task).flatten()  # once per task
        self.old_column = task_of_class[self.columns] < task

    def end_task(self, task, data):
        plain = getattr(self.net, "_orig_mod", self.net)  # the plain module when --compile wrapped it
        self.old_net.load_state_dict(plain.state_dict())

    def targets(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The old network's sigmoids for earlier tasks' classes, one-hot labels for the current task's."""
        one_hot = (labels.unsqueeze(1) == self.columns).float()  # over the seen classes only
        if self.current_task == 0:
            return one_hot
        with torch.no_grad():
            old = torch.sigmoid(self.old_net(inputs)[:, self.columns].float())
        return torch.where(self.old_column, old, one_hot)

    def distillation_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.net(inputs)[:, self.columns].float()
        return F.binary_cross_entropy_with_logits(logits, self.targets(inputs, labels))
