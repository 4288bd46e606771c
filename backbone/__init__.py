"""Backbones: feature extractors returning post-ReLU features of size ``feature_dim``.

Register one with ``@register_backbone("name")`` in a new module of this
package; the class is built as ``cls(input_shape, **kwargs)`` and must set
``self.feature_dim``.
"""
from utils.registry import lookup, names, registrar

BACKBONES: dict = {}
register_backbone = registrar(BACKBONES, "backbone")


def get_backbone_class(name: str) -> type:
    return lookup(BACKBONES, "backbone", "backbone", name)


def backbone_names() -> list:
    return names(BACKBONES, "backbone")
