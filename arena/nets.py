"""Small plain networks the core's own objectives need (the method packages have theirs),
and eval_mode, how any objective runs a net in eval mode for a block."""
from __future__ import annotations

import contextlib

from torch import Tensor, nn


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """`net` in eval mode (batch norm's running statistics, no dropout) for the block, then
    back in the mode it was in."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


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
