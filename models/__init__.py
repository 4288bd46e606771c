"""Continual-learning methods.

A method is one module in this package defining a ``ContinualModel``
subclass decorated with ``@register_model("name")``; its own flags are
declared in the class (``FLAGS``), so nothing else needs editing.
"""
from utils.registry import lookup, names, registrar

MODELS: dict = {}
register_model = registrar(MODELS, "model")

# The authors' method names: a registered method plus the flags the name fixes.
ALIASES = {
    "ermr": ("er", {"classifier": "fc", "masked_softmax": 1}),
    "orthermr": ("er", {"classifier": "fno", "masked_softmax": 1}),
    "orther": ("er", {"classifier": "fno", "masked_softmax": 0}),
    "derppmr": ("derpp", {"classifier": "fc", "masked_softmax": 1}),
    "orthderppmr": ("derpp", {"classifier": "fno", "masked_softmax": 1}),
    "orthderpp": ("derpp", {"classifier": "fno", "masked_softmax": 0}),
}


def get_model_class(name: str) -> type:
    return lookup(MODELS, "models", "model", name)


def model_names() -> list:
    return names(MODELS, "models")


def model_aliases() -> dict:
    """alias -> (registered model name, flags the alias fixes)."""
    return {alias: (name, dict(flags)) for alias, (name, flags) in ALIASES.items()}
