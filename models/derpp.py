import torch

from models import register_model
from models.continual_model import ContinualModel
from utils.cli import Flag, non_negative


@register_model("derpp")
class DERpp(ContinualModel):
    """DER++: stream loss + alpha * MSE(logits of a buffer draw, stored logits)
    + beta * CE(a second, independent buffer draw).

    The stored logits are the stream batch's all-class, unmasked logits.  Which
    forward pass gives them follows the authors' two code paths:
    masked (their ``derppmr``): one more forward pass after the optimizer step,
    in training mode and without gradients; unmasked (Mammoth's ``derpp``,
    which their code runs without the mask): the logits of the step's own
    stream forward pass, taken before the optimizer step.
    """

    USES_BUFFER = True
    # --load_best_args: the paper's table (the authors' fno_contid/utils/best_args.py), shared by FC and FNO;
    # seq-digits is this project's own choice.
    BEST_ARGS = {
        "seq-mnist": {200: dict(lr=0.03, minibatch_size=128, alpha=0.2, beta=1.0),
                      500: dict(lr=0.03, minibatch_size=10, alpha=1.0, beta=0.5),
                      5120: dict(lr=0.1, minibatch_size=64, alpha=0.2, beta=0.5)},
        "seq-cifar10": {200: dict(lr=0.03, minibatch_size=32, alpha=0.1, beta=0.5),
                        500: dict(lr=0.03, minibatch_size=32, alpha=0.2, beta=0.5),
                        5120: dict(lr=0.03, minibatch_size=32, alpha=0.1, beta=1.0)},
        "seq-cifar100": {b: dict(lr=0.03, minibatch_size=32, alpha=0.1, beta=0.5) for b in (200, 500, 5120)},
        "seq-tinyimg": {200: dict(lr=0.03, minibatch_size=32, alpha=0.1, beta=1.0),
                        500: dict(lr=0.03, minibatch_size=32, alpha=0.2, beta=0.5),
                        5120: dict(lr=0.03, minibatch_size=32, alpha=0.1, beta=0.5)},
        "seq-digits": {b: dict(lr=0.03, minibatch_size=10, alpha=0.2, beta=1.0) for b in (50, 200, 500)},
    }
    FLAGS = {
        "alpha": Flag(non_negative(float), None, "weight of the logit-replay (MSE) term", required=True),
        "beta": Flag(non_negative(float), None, "weight of the label-replay (CE) term", required=True),
    }

    def replay_label_weight(self) -> float:
        return self.args.beta

    def observe(self, inputs, labels, not_aug_inputs):
        augment, mb = self.setting.augment, self.args.minibatch_size
        stream_logits = []

        def stream_term(logits):
            stream_logits.append(logits.detach().float())
            return self.stream_loss(logits, labels)

        self.opt.zero_grad(set_to_none=True)
        terms = [(inputs, stream_term)]
        if not self.buffer.is_empty():
            buf_x, buf_logits = self.buffer.sample(mb, "examples", "logits")
            terms.append((augment(buf_x), lambda out: self.args.alpha * self.mse(out, buf_logits)))
            beta = self.replay_label_weight()
            if beta:
                buf_x2, buf_y = self.buffer.sample(mb, "examples", "labels")
                terms.append((augment(buf_x2), lambda out: beta * self.cross_entropy(out, buf_y)))
        loss = self.backward_terms(terms)
        self.opt.step()
        if self.args.masked_softmax:
            with torch.no_grad(), self.autocast():
                stream_logits[0] = self.net(inputs).float()
        self.buffer.add(examples=not_aug_inputs, labels=labels, logits=stream_logits[0])
        return loss
