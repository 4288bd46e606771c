"""What iCaRL and LwF.MC share: a sigmoid per seen class, distilled from a frozen copy of the previous network."""
import copy

import torch
import torch.nn.functional as F

from models.continual_model import ContinualModel
from utils.cli import Flag, non_negative
from utils.errors import UserError


def non_negative_logits(head) -> bool:
    """Whether ``head`` gives logits >= 0 on the backbones' post-ReLU features: no bias, non-negative class
    weights and a non-negative scale (FNO's), whatever the head's name."""
    scale = getattr(head, "scale", None)
    return (getattr(head, "bias", None) is None and bool((head.class_weights() >= 0).all())
            and (scale is None or float(scale.detach()) >= 0))


class SigmoidDistillation(ContinualModel):
    """Binary cross-entropy over the classes seen so far (``columns``, set at each task's start); the targets
    are one-hot labels for the current task's classes and the previous network's sigmoid outputs for earlier
    tasks' classes (``old_column``).  The previous network is a frozen copy taken at each task's end, kept in
    eval mode (so its batch-norm statistics stay as they were) and in the state dict (checkpoints).  The
    optimizer is SGD with Mammoth's ``--optim_wd`` weight decay.

    ``--bce_offset c`` makes every sigmoid (both networks') read logit - c.  A head whose logits are all
    >= 0 (FNO: non-negative rows on post-ReLU features, no bias) puts every sigmoid at >= 0.5, so the
    negative targets are out of reach and the loss has a floor near log 2 per negative column: such a
    head is refused with c = 0.  Measured on seq-digits (3 seeds, docs/fidelity.md), c = 5 lifts FNO
    (iCaRL 84.3 -> 92.7, LwF.MC 61.1 -> 69.6 Class-IL) and FC less (88.7 -> 91.6, 55.6 -> 60.6); the
    default 0 keeps Mammoth's loss for the heads that can reach the targets."""

    NEEDS_BOUNDARIES = True  # the seen columns and the frozen previous network change at task boundaries
    FLAGS = {"optim_wd": Flag(non_negative(float), 0.0, "SGD weight decay (Mammoth's --optim_wd)"),
             "bce_offset": Flag(non_negative(float), 0.0, "icarl, lwf_mc: every sigmoid reads logit - OFFSET (both "
                                                          "networks); lets a head whose logits are >= 0 (FNO) reach "
                                                          "the negative targets")}

    def __init__(self, net, args, setting):
        if args.bce_offset == 0 and non_negative_logits(net.head):
            raise UserError(f"--model {args.model} with --classifier {args.classifier}: every logit is >= 0 "
                            f"(non-negative class weights on post-ReLU features, no bias), so every sigmoid is "
                            f">= 0.5 and the negative targets are out of reach; give --bce_offset > 0 (5 measured "
                            f"best on seq-digits, docs/fidelity.md) and the same to the runs it is compared with")
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
            old = torch.sigmoid(self.old_net(inputs)[:, self.columns].float() - self.args.bce_offset)
        return torch.where(self.old_column, old, one_hot)

    def distillation_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.net(inputs)[:, self.columns].float() - self.args.bce_offset
        return F.binary_cross_entropy_with_logits(logits, self.targets(inputs, labels))
