from models import register_model
from models.derpp import DERpp


@register_model("der")
class DER(DERpp):
    """Dark Experience Replay: DER++ without the label-replay term (beta = 0)."""

    FLAGS = {"alpha": DERpp.FLAGS["alpha"]}
    BEST_ARGS: dict = {}  # not DER++'s

    def replay_label_weight(self) -> float:
        return 0.0
