from models import register_model
from models.continual_model import ContinualModel


@register_model("sgd")
class Sgd(ContinualModel):
    """Fine-tuning on the stream alone: the lower bound."""

    def observe(self, inputs, labels, not_aug_inputs):
        with self.autocast():
            loss = self.stream_loss(self.net(inputs), labels)
        return self.step(loss)
