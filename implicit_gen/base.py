"""What every generator objective shares: the model section, G, latents and sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arena.objective import Objective
from arena.registry import ConfigError

from .nets import ARCHS, NORMS, build_discriminator, build_generator


@dataclass
class GeneratorModel:
    arch: str = "resnet32"  # resnet32 (gan_cifar_resnet) | resnet64 (gan_64x64 "Good" nets)
    width: int = 0  # 0 = the reference width (128 for resnet32, 64 for resnet64)
    z_dim: int = 128
    d_norm: str = "none"  # none | layer (the reference WGAN-GP 64x64 critic)
    out_dim: int = 1  # size of D's / the IE encoder's output


class GeneratorObjective(Objective):
    """Builds G ("G") and the image-side net ("D" or "E") from the model section."""

    generates = True
    main_player = "G"
    default_ema = {"G": 0.999}
    Model = GeneratorModel
    image_net = "D"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        m = cfg.model
        width = m.width or None
        self.nets["G"] = build_generator(m.arch, z_dim=m.z_dim, channels=info.channels,
                                         resolution=info.resolution, width=width)
        self.nets[self.image_net] = build_discriminator(m.arch, channels=info.channels, resolution=info.resolution,
                                                        width=width, out_dim=m.out_dim, norm=m.d_norm)

    @classmethod
    def check_config(cls, cfg) -> None:
        ARCHS.get(cfg.model.arch, key="model.arch")
        NORMS.get(cfg.model.d_norm, key="model.d_norm")
        if cfg.model.z_dim < 1 or cfg.model.out_dim < 1:
            raise ConfigError("model.z_dim and model.out_dim must be >= 1")

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.cfg.model.z_dim, generator=generator)

    def noise(self, n: int) -> Tensor:
        """Training-time latents from the process's RNG, on the device."""
        return torch.randn(n, self.cfg.model.z_dim, device=self.device)

    @torch.no_grad()
    def generate(self, z: Tensor, ema: bool = True) -> Tensor:
        # G's batch norm uses its running statistics here, not the batch's (the
        # reference samples with batch statistics): so each image depends on its own z
        # only, and IS/FID do not change with the batch size or the number of processes.
        G = self.net("G", ema)
        was_training = G.training
        G.eval()
        try:
            return G(z.to(self.device))
        finally:
            G.train(was_training)
