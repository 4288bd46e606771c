import torch

from models import register_model
from models.continual_model import ContinualModel


@register_model("er")
class ER(ContinualModel):
    """Experience Replay, in the two forms the authors ran (``--masked_softmax`` picks one).

    Masked (the authors' ``ermr``): masked cross-entropy on the stream batch plus
    cross-entropy on a buffer minibatch, in two separate forward passes (one
    merged pass when the network has no batch norm: the same loss and gradients,
    ``backward_terms``).
    Unmasked (Mammoth's ``er``, which the authors' code runs without the mask):
    the stream batch and the buffer minibatch are concatenated and go through
    the network in one forward pass (one batch-norm batch), with one
    cross-entropy averaged over all of them.  The buffer keeps non-augmented
    stream inputs and labels and augments them when they are replayed.
    """

    USES_BUFFER = True
    # --load_best_args: dataset -> buffer size -> flags.  The paper's table (the authors' code,
    # fno_contid/utils/best_args.py), shared by FC and FNO; seq-digits is this project's own choice.
    BEST_ARGS = {
        "seq-mnist": {200: dict(lr=0.01, minibatch_size=10), 500: dict(lr=0.1, minibatch_size=10),
                      5120: dict(lr=0.1, minibatch_size=10)},
        "seq-cifar10": {b: dict(lr=0.1, minibatch_size=32) for b in (200, 500, 5120)},
        "seq-cifar100": {b: dict(lr=0.1, minibatch_size=32) for b in (200, 500, 5120)},
        "seq-tinyimg": {200: dict(lr=0.1, minibatch_size=32), 500: dict(lr=0.03, minibatch_size=32),
                        5120: dict(lr=0.1, minibatch_size=32)},
        "seq-digits": {b: dict(lr=0.1, minibatch_size=10) for b in (50, 200, 500)},
        # online:<dataset> (--online 1): the ER-ACE authors' sweep of ER (pclucas14/AML,
        # sweeps/hp_result_final.csv; see models/er_ace.py): lr 0.01 was best at every buffer size.
        "online:seq-cifar10": {b: dict(lr=0.01, minibatch_size=10) for b in (200, 500, 1000)},
        "online:seq-cifar100": {b: dict(lr=0.01, minibatch_size=10) for b in (2000, 5000, 10000)},
    }

    def replay_batch(self):
        buf_x, buf_y = self.buffer.sample(self.args.minibatch_size, "examples", "labels")
        return self.setting.augment(buf_x), buf_y

    def observe(self, inputs, labels, not_aug_inputs):
        self.opt.zero_grad(set_to_none=True)
        if self.args.masked_softmax:
            terms = [(inputs, lambda out: self.stream_loss(out, labels))]
            if not self.buffer.is_empty():
                buf_x, buf_y = self.replay_batch()
                terms.append((buf_x, lambda out: self.cross_entropy(out, buf_y)))
            loss = self.backward_terms(terms)
        else:
            x, y = inputs, labels
            if not self.buffer.is_empty():
                buf_x, buf_y = self.replay_batch()
                x, y = torch.cat((inputs, buf_x)), torch.cat((labels, buf_y))
            loss = self.backward(lambda: self.cross_entropy(self.net(x), y))
        self.opt.step()
        self.buffer.add(examples=not_aug_inputs, labels=labels)
        return loss
