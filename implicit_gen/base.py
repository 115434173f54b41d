"""What every generator objective shares: the model section, G, latents and sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arena.nets import eval_mode
from arena.objective import Objective, ObjectiveOptions
from arena.schema import Count, NonNegativeInt

from .nets import ARCHS, NORMS, build_discriminator, build_generator




@dataclass
class GeneratorModel:
    arch: str = "resnet32"  # resnet32 (gan_cifar_resnet) | resnet64 (gan_64x64 "Good" nets)
    width: int = 0  # 0 = the reference width (128 for resnet32, 64 for resnet64)
    z_dim: Count = 128
    d_norm: str = "none"  # none | layer (the reference WGAN-GP 64x64 critic)
    out_dim: Count = 1  # size of D's / the IE encoder's output


@dataclass
class GeneratorOptions(ObjectiveOptions):
    """Options every generator objective has."""

    # Train-mode forward passes that re-estimate the EMA generator's BatchNorm statistics
    # before it samples (0 = keep the live G's statistics)
    ema_bn_batches: NonNegativeInt = 200


class GeneratorObjective(Objective):
    """Builds G ("G") and the image-side net ("D" or "E") from the model section."""

    generates = True
    main_player = "G"
    default_ema = {"G": 0.999}
    Model = GeneratorModel
    image_net = "D"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self._bn_key: tuple | None = None  # the EMA G weights its BatchNorm statistics were estimated for
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
        if ema and "G" in self.ema:
            self._refresh_ema_bn(G)
        with eval_mode(G):
            return G(z.to(self.device))

    def _refresh_ema_bn(self, G: nn.Module) -> None:
        """The EMA copy holds the live G's BatchNorm statistics (the trainer copies
        buffers), which do not describe the averaged weights. Re-estimate them for the
        EMA weights once per change of those weights (tensor version counters tell)."""
        n = self.opts.ema_bn_batches
        key = tuple(p._version for p in G.parameters())
        if n > 0 and key != self._bn_key:
            recompute_batchnorm(G, self.latent, n, self.cfg.train.batch_size)
            self._bn_key = key


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, latent, batches: int, batch_size: int, seed: int = 0) -> None:
    """Replace every BatchNorm's running statistics by their average over `batches`
    train-mode forward passes on seeded latents (no gradients): the running mean becomes
    the mean of the batch means, the running variance the mean of the (unbiased) batch
    variances. Seeded on the CPU, so the result depends on the weights only and no
    training RNG is drawn (every process computes the same statistics)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training, device = net.training, next(net.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average: equal weight for every batch
    g = torch.Generator().manual_seed(seed)
    net.train()
    try:
        for _ in range(batches):
            net(latent(batch_size, g).to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(was_training)
