from models import register_model
from models.continual_model import ContinualModel


@register_model("sgd")
class Sgd(ContinualModel):
    """Fine-tuning on the stream alone: the lower bound."""

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(lambda: self.stream_loss(self.net(inputs), labels))
        self.opt.step()
        return loss
