"""Continual-learning methods.

A method is one module in this package defining a ``ContinualModel``
subclass decorated with ``@register_model("name")``; nothing else needs
editing.  A class may declare ``ALIASES = {"alias": {"classifier": ..., "masked_softmax": ...}}``
for names that fix some flags (the authors' ``orthermr`` and friends).
"""
from utils.registry import lookup, names, registrar, discover

MODELS: dict = {}
register_model = registrar(MODELS, "model")


def get_model_class(name: str) -> type:
    return lookup(MODELS, "models", "model", name)


def model_names() -> list:
    return names(MODELS, "models")


def model_aliases() -> dict:
    """alias -> (registered model name, flags the alias fixes)."""
    discover("models")
    return {alias: (name, dict(flags)) for name, cls in MODELS.items()
            for alias, flags in getattr(cls, "ALIASES", {}).items()}
