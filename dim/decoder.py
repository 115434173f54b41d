"""The DCGAN decoder: a code [B, D] -> an image in [-1, 1]. One class for every net that maps
codes to images: the MS-SSIM probe's decoder (eval.probes.reconstruction), the VAE's and
AAE's decoders and the BiGAN's generator (dim.baselines)."""
from __future__ import annotations

import math

from torch import Tensor, nn

from arena.registry import ConfigError


def decoder_upsamplings(resolution: int) -> int:
    """k such that resolution = 4 * 2^k (k >= 1): the decoder's stride-2 layers."""
    ups = int(round(math.log2(resolution / 4))) if resolution >= 4 else 0
    if ups < 1 or 4 * 2 ** ups != resolution:
        raise ConfigError(f"data.resolution: the DCGAN decoder needs a resolution 4 * 2^k (k >= 1: 8, 16, 32, "
                          f"64, ...), got {resolution}")
    return ups


class Decoder(nn.Module):
    """Code [B, D] -> image [B, C, R, R] in [-1, 1]: Linear to 4x4, then stride-2 transposed
    convs (4x4, BN, ReLU) doubling the side up to R, tanh (a DCGAN generator, as the paper's
    decoders were, App. A.1). `width` is the channels of the last hidden map; each layer
    before it doubles them."""

    def __init__(self, n_in: int, channels: int, resolution: int, width: int = 64):
        super().__init__()
        ups = decoder_upsamplings(resolution)
        c = width * 2 ** (ups - 1)
        self.c0 = c
        self.fc = nn.Sequential(nn.Linear(n_in, c * 16), nn.BatchNorm1d(c * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for k in range(ups - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(self.fc(h.flatten(1)).view(-1, self.c0, 4, 4))  # -1: a batch size torch.export keeps free
