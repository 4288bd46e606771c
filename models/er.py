import torch.nn.functional as F

from models import register_model
from models.continual_model import ContinualModel


@register_model("er")
class ER(ContinualModel):
    """Experience Replay: stream loss (masked when enabled) + cross-entropy on a buffer minibatch.

    Stream and buffer go through the network in separate forward passes; the
    buffer keeps non-augmented stream inputs and labels and augments them when
    they are replayed.
    """

    USES_BUFFER = True
    HYPERPARAMETERS = ("lr", "minibatch_size")
    ALIASES = {
        "ermr": {"classifier": "fc", "masked_softmax": 1},
        "orthermr": {"classifier": "fno", "masked_softmax": 1},
        "orther": {"classifier": "fno", "masked_softmax": 0},
    }

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.stream_loss(self.net(inputs), labels))
        if not self.buffer.is_empty():
            buf_x, buf_y = self.buffer.sample(self.args.minibatch_size, "examples", "labels")
            loss = loss + self.backward(lambda: F.cross_entropy(self.net(self.setting.augment(buf_x)), buf_y))
        self.opt.step()
        self.buffer.add(examples=not_aug_inputs, labels=labels)
        return loss
