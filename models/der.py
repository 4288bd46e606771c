from models import register_model
from models.derpp import DERpp


@register_model("der")
class DER(DERpp):
    """Dark Experience Replay: DER++ without the label-replay term (beta = 0)."""

    FLAGS = {"alpha": DERpp.FLAGS["alpha"]}
    # --load_best_args: dataset -> buffer size -> flags, not DER++'s.  Mammoth's table (aimagelab/mammoth,
    # utils/best_args.py, 'der'), which the authors' code keeps unchanged (khyong/FNO-classifier,
    # fno_contid/utils/best_args.py).  seq-tinyimg 200 also lists softmax_temp 2.0, which DER does not use.
    # seq-cifar100 has only the X-DER-era entries (buffers 500 and 2000: lr 0.03, alpha 0.3; the replay batch
    # left at the batch size, 32).  seq-digits is this project's own choice: DER++'s row without beta.
    BEST_ARGS = {
        "seq-mnist": {200: dict(lr=0.03, minibatch_size=10, alpha=0.2),
                      500: dict(lr=0.03, minibatch_size=128, alpha=1.0),
                      5120: dict(lr=0.1, minibatch_size=128, alpha=0.5)},
        "seq-cifar10": {b: dict(lr=0.03, minibatch_size=32, alpha=0.3) for b in (200, 500, 5120)},
        "seq-cifar100": {b: dict(lr=0.03, minibatch_size=32, alpha=0.3) for b in (500, 2000)},
        "seq-tinyimg": {b: dict(lr=0.03, minibatch_size=32, alpha=0.1) for b in (200, 500, 5120)},
        "seq-digits": {b: dict(lr=0.03, minibatch_size=10, alpha=0.2) for b in (50, 200, 500)},
    }

    def replay_label_weight(self) -> float:
        return 0.0
