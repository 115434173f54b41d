"""Small plain networks the core's own objectives need (the method packages have theirs)."""
from __future__ import annotations

from torch import Tensor, nn


class ConvEncoder(nn.Module):
    """Strided 4x4 convs (BN + LeakyReLU) halving the image down to 4x4, then linear -> out_dim.

    Channels and resolution come from the data; resolution must be 4 * 2^k."""

    def __init__(self, channels: int, resolution: int, out_dim: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c, r = channels, resolution
        while r > 4:
            layers += [nn.Conv2d(c, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            c, r, width = width, r // 2, width * 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * r * r, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))
