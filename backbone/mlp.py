"""The MLP of the MNIST benchmarks: input-100-100 with ReLU, initialised as the authors' (Mammoth's) MLP."""
import math

import torch
from torch import nn

from backbone import register_backbone


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` in ``module`` (the reference MLP's init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


@register_backbone("mlp")
class MLP(nn.Module):
    """Two hidden layers of ``hidden`` units; features are the post-ReLU output.

    The reference code initialises both layers and the FC classifier with
    Xavier-uniform weights and zero biases (not PyTorch's default); on
    seq-mnist that moves the FC baseline by about 3 points, so ``init_head``
    gives a learnable linear head the same initialisation.
    """

    def __init__(self, input_shape, hidden: int = 100):
        super().__init__()
        in_features = math.prod(input_shape)
        self.feature_dim = hidden
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        xavier_init(self)

    def init_head(self, head: nn.Module) -> None:
        """Called once on the head built for this backbone; fixed heads have no ``nn.Linear`` to touch."""
        xavier_init(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
