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
