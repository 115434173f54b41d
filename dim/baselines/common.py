"""What the baselines share: the model section (a DIM encoder, a code size, the DCGAN
decoder's width), their construction and checks, training noise and the reconstruction error."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from arena.distributed import convert_sync_batchnorm
from arena.objective import DataInfo
from arena.schema import Count

from ..decoder import Decoder, decoder_upsamplings
from ..objective import EncoderObjective, check_encoder_config


@dataclass
class BaselineModel:
    encoder: str = "dcgan32"  # dcgan32 (32 or 16 px) | alexnet64 (64 px): the DIM rows' encoders (A.1)
    width: float = 1.0  # multiplies the encoder's hidden widths
    y_dim: int = 64  # the code Y: VAE / AAE latent, BiGAN's z (cortex: 64, as DIM's Y)
    decoder_width: Count = 64  # channels of the decoder's (BiGAN: generator's) last hidden map (MS-SSIM probe's)
    sync_bn: bool = False  # N processes: batch norm over the global batch (encoder, decoder / generator)


class BaselineObjective(EncoderObjective):
    """An encoder objective with a DCGAN decoder from the code back to images; it generates
    (sample grids, IS / FID) by decoding codes drawn from N(0, I)."""

    Model = BaselineModel
    generates = True
    decoder_player: ClassVar[str] = "decoder"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_encoder_config(cfg)
        decoder_upsamplings(cfg.data.resolution)

    def synced(self, net: nn.Module) -> nn.Module:
        """`net` with global-batch batch norm if model.sync_bn (what N processes = 1 needs)."""
        return convert_sync_batchnorm(net) if self.cfg.model.sync_bn else net

    def build_decoder(self, info: DataInfo) -> Decoder:
        m = self.cfg.model
        return self.synced(Decoder(m.y_dim, info.channels, info.resolution, m.decoder_width))

    def encoder_player(self, info: DataInfo, **extra: nn.Module) -> nn.ModuleDict:
        return nn.ModuleDict({"encoder": self.synced(self.build_encoder(self.cfg, info)), **extra})

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
