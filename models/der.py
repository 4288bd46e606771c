from models import register_model
from models.derpp import DERpp


@register_model("der")
class DER(DERpp):
    """Dark Experience Replay: DER++ without the label-replay term (beta = 0)."""

    HYPERPARAMETERS = ("lr", "minibatch_size", "alpha")
    ALIASES = {}

    def replay_label_weight(self) -> float:
        return 0.0
