"""The GAN baselines with the IE's networks: one objective class, four registered losses.

    nsgan_cp  non-saturating GAN + contractive penalty on D at real data (Mescheder et al. 2018's R1)
    wgan_gp   WGAN-GP (Gulrajani et al. 2017): lambda 10 at random interpolates, 5 critic steps
    gan       the original minimax GAN (saturating log(1 - D) for G)
    lsgan     least-squares GAN (Mao et al. 2017)

They differ only in the loss pair from GAN_LOSSES, the penalty and the
default critic:generator ratio, so Figure 14 and Table 10 compare like with like.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arena.losses import (contractive_penalty, d_loss_jsd, d_loss_least_squares, d_loss_wasserstein,
                          g_loss_least_squares, g_loss_nonsaturating, g_loss_saturating, g_loss_wasserstein,
                          gradient_penalty)
from arena.objective import OBJECTIVES, Batch, LazyPenalty, Phase
from arena.registry import Registry
from arena.schema import NonNegative

from .base import GeneratorObjective, GeneratorOptions

# name -> (discriminator loss, generator loss)
GAN_LOSSES: Registry = Registry("gan loss")
GAN_LOSSES.register("gan")((d_loss_jsd, g_loss_saturating))
GAN_LOSSES.register("nsgan")((d_loss_jsd, g_loss_nonsaturating))
GAN_LOSSES.register("wgan")((d_loss_wasserstein, g_loss_wasserstein))
GAN_LOSSES.register("lsgan")((d_loss_least_squares, g_loss_least_squares))


class GAN(GeneratorObjective):
    loss_name: str
    penalty: str = "none"  # none | contractive | gradient
    n_critic: int = 1

    def phases(self) -> list[Phase]:
        return [Phase("critic", ("D",), self.n_critic), Phase("generator", ("G",), data="none")]

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        d_loss, g_loss = GAN_LOSSES.get(self.loss_name)
        D, G = self.nets["D"], self.nets["G"]
        if phase == "generator":
            return {"loss": g_loss(D(G(self.noise(batch_size))))}
        with torch.no_grad():
            x_fake = G(self.noise(batch.x.shape[0]))
        weight = self.opts.penalty_weight * self.penalty_scale(phase)  # 0 on a lazily skipped step
        if self.penalty == "contractive" and weight > 0:
            penalty, real = contractive_penalty(D, batch.x)  # reuses the forward on real data
        else:
            real, penalty = D(batch.x), None
        fake = D(x_fake)
        if self.penalty == "gradient" and weight > 0:
            penalty = gradient_penalty(D, batch.x, x_fake)
        out = {"loss": d_loss(real, fake), "D_real": real.detach().mean(), "D_fake": fake.detach().mean()}
        if penalty is not None:
            out["loss"] = out["loss"] + weight * penalty
            out["penalty"] = penalty.detach()
        return out


@dataclass
class NSGANCPOptions(GeneratorOptions, LazyPenalty):  # penalty_every: lazily on the critic steps
    name: str = "nsgan_cp"
    penalty_weight: NonNegative = 10.0  # GAN_stability's reg_param default


@dataclass
class WGANGPOptions(GeneratorOptions, LazyPenalty):  # penalty_every: lazily on the critic steps
    name: str = "wgan_gp"
    penalty_weight: NonNegative = 10.0  # lambda in Gulrajani et al. 2017


@dataclass
class PlainOptions(GeneratorOptions):
    name: str = "gan"
    penalty_weight: NonNegative = 0.0


@OBJECTIVES.register("nsgan_cp")
class NSGANCP(GAN):
    Options, loss_name, penalty = NSGANCPOptions, "nsgan", "contractive"


@OBJECTIVES.register("wgan_gp")
class WGANGP(GAN):
    Options, loss_name, penalty, n_critic = WGANGPOptions, "wgan", "gradient", 5


@OBJECTIVES.register("gan")
class SaturatingGAN(GAN):
    Options, loss_name = PlainOptions, "gan"


@OBJECTIVES.register("lsgan")
class LSGAN(GAN):
    Options, loss_name = PlainOptions, "lsgan"
