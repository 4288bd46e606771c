from models import register_model
from models.continual_model import ContinualModel


@register_model("sgd")
class Sgd(ContinualModel):
    """Fine-tuning on the stream alone: the lower bound."""

    # --load_best_args: dataset -> buffer size (0: no buffer) -> flags.  Mammoth's table (aimagelab/mammoth,
    # utils/best_args.py, 'sgd' at buffer -1), which the authors' code keeps unchanged
    # (khyong/FNO-classifier, fno_contid/utils/best_args.py); seq-cifar100 from the same files' X-DER-era
    # entry (lr 0.03, no momentum or weight decay, as here).  seq-digits is this project's own choice: ER's
    # learning rate on it, so that SGD and ER differ only in the replay.
    BEST_ARGS = {
        "seq-mnist": {0: dict(lr=0.03)},
        "seq-cifar10": {0: dict(lr=0.1)},
        "seq-cifar100": {0: dict(lr=0.03)},
        "seq-tinyimg": {0: dict(lr=0.03)},
        "seq-digits": {0: dict(lr=0.1)},
    }

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.stream_loss(self.net(inputs), labels))
        self.opt.step()
        return loss
