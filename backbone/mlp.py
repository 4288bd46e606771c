"""The MLP of the MNIST benchmarks: input-100-100 with ReLU."""
import math

import torch
from torch import nn

from backbone import register_backbone


@register_backbone("mlp")
class MLP(nn.Module):
    """Two hidden layers of ``hidden`` units; features are the post-ReLU output."""

    def __init__(self, input_shape, hidden: int = 100):
        super().__init__()
        in_features = math.prod(input_shape)
        self.feature_dim = hidden
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
