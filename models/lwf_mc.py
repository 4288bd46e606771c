import torch

from models import register_model
from models.sigmoid_distillation import SigmoidDistillation
from utils.cli import Flag, non_negative


@register_model("lwf_mc")
class LwFMC(SigmoidDistillation):
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
        **SigmoidDistillation.FLAGS,
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

    NO_MASKING = "trains one sigmoid per class with binary cross-entropy and has no softmax to mask"
    NEEDS_NEW_CLASSES = "learns new classes task by task (class- and task-incremental benchmarks)"

    def forward(self, x):
        """Logits with the classes of later tasks at -inf: the prediction is over the seen classes."""
        unseen = self.setting.task_of_class > self.current_task
        return self.net(x).masked_fill(unseen, float("-inf"))

    def lwf_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.distillation_loss(inputs, labels)
        if self.args.wd_reg:
            loss = loss + self.args.wd_reg * sum(torch.sum(p ** 2) for p in self.net.parameters())
        return loss

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.lwf_loss(inputs, labels))
        self.opt.step()
        return loss
