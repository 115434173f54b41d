"""What the decoding baselines (vae, aae, bigan) share: the model section (an encoder
objective's plus the DCGAN decoder's width; y_dim is the VAE / AAE latent and BiGAN's z,
64 as DIM's Y and in cortex), the decoder's construction and checks, sampling, training
noise and the reconstruction error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from arena.nets import eval_mode
from arena.objective import DataInfo
from arena.schema import Count

from ..decoder import Decoder, decoder_upsamplings
from ..objective import EncoderModel, EncoderObjective


@dataclass
class BaselineModel(EncoderModel):
    decoder_width: Count = 64  # channels of the decoder's (BiGAN: generator's) last hidden map (MS-SSIM probe's)


class BaselineObjective(EncoderObjective):
    """An encoder objective with a DCGAN decoder from the code back to images; it generates
    (sample grids, IS / FID) by decoding codes drawn from N(0, I)."""

    Model = BaselineModel
    generates = True
    decoder_player: ClassVar[str] = "decoder"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        decoder_upsamplings(cfg.data.resolution)

    def build_decoder(self, info: DataInfo) -> Decoder:
        m = self.cfg.model
        return self.synced(Decoder(m.y_dim, info.channels, info.resolution, m.decoder_width))

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.cfg.model.y_dim, generator=generator)

    @torch.no_grad()
    def generate(self, z: Tensor, ema: bool = True) -> Tensor:
        """Dec(z) with batch norm's running statistics: each image depends on its own z only."""
        with eval_mode(self.net(self.decoder_player, ema)) as dec:
            return dec(z.to(self.device))

    def noise(self, n: int, dim: int) -> Tensor:
        """Training noise (eps, z, prior samples) from the process's RNG, on the device."""
        return torch.randn(n, dim, device=self.device)


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per image: the sum over pixels of (x_hat - x)^2 (the Gaussian decoder's -log p up to
    constants), [B] in fp32."""
    return (x_hat.float() - x.float()).pow(2).flatten(1).sum(1)
