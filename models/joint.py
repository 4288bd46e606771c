from models import register_model
from models.sgd import Sgd


@register_model("joint")
class Joint(Sgd):
    """The upper bound: one training run on the data of all tasks together.

    The trainer gives a JOINT model a single stage holding every task's
    training data (shuffled together) and evaluates once, on all tasks, so its
    accuracy matrices have only the final row.
    """

    JOINT = True
    NEEDS_BOUNDARIES = True  # one stage of every task: there is no stream to run without boundaries
    # --load_best_args: dataset -> buffer size (0: no buffer) -> flags.  Mammoth has no table of its own for
    # joint: its utils/main.py (aimagelab/mammoth, and the authors' khyong/FNO-classifier fno_contid/utils/main.py)
    # loads best_args[dataset]['sgd'] for --model joint, so joint uses SGD's table.
    BEST_ARGS = Sgd.BEST_ARGS
