"""`aae`: the adversarial autoencoder (Makhzani et al. 2016), the paper's AAE rows (Tables 1-3).

A deterministic autoencoder whose code Y = E(x) is matched to a prior by the core's prior
matching (arena.prior: the discriminator, its JSD loss and the encoder's loss):

    reconstruction (encoder, decoder):  E_batch[ recon(Dec(E(x)), x) ]
    prior (prior_D, same batch):        maximize E_V[log D(v)] + E[log(1 - D(E(x)))], v ~ prior
    adversarial (encoder, same batch):  adversarial * E[-log D(E(x))]

Defaults, with their source (cortex `adversarial_autoencoder.py`, 2018, the authors' runs):
prior N(0, I_64); discriminator 200-200-1; contractive penalty 0.5 on the prior samples only
(`penalty_on: prior`; the project's prior matching penalizes both sides: `both`); one D step
per autoencoder step; adversarial weight 1. Where we differ: the reconstruction is the
per-image pixel sum of (x_hat - x)^2 averaged over the batch (`reconstruction: sum`, the
VAE's scale); cortex's mean over pixels divided again by the batch size
(`reconstruction: cortex`) weighs it 1/64 of the adversarial term at batch 64, and its
decoder reconstructs visibly worse (digits: MS-SSIM 0.63 against 0.94).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from arena.objective import OBJECTIVES, Batch, DataInfo, LazyPenalty, Phase
from arena.prior import (PenaltySide, PriorConfig, PriorDiscriminator, check_prior, discriminator_loss,
                         describe_prior, encoder_loss, lazy_penalty_log, sample_prior)
from arena.schema import NonNegative

from ..objective import frozen_bn_stats
from .common import BaselineObjective, squared_error



def _aae_prior() -> PriorConfig:
    # cortex adversarial_autoencoder.py (2018): N(0, I), D 200-200-1, GAN loss, penalty 0.5
    return PriorConfig(name="gaussian", mean=0.0, std=1.0, hidden=[200, 200], encoder_loss="nonsaturating",
                       penalty=0.5)


@dataclass
class AAEOptions(LazyPenalty):  # penalty_every: lazy regularization of prior_D's penalty
    name: str = "aae"
    prior: PriorConfig = field(default_factory=_aae_prior)
    penalty_on: PenaltySide = "prior"  # prior (cortex) | both (the project's prior matching)
    adversarial: NonNegative = 1.0  # weight of the encoder's adversarial loss (cortex: 1; 0 = a plain autoencoder)
    reconstruction: Literal["sum", "cortex"] = "sum"  # sum: per image, the VAE's scale; cortex: pixel mean / batch


@OBJECTIVES.register("aae")
class AAE(BaselineObjective):
    Options = AAEOptions

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        self.nets["encoder"] = self.encoder_player(info)
        self.nets["decoder"] = self.build_decoder(info)
        self.nets["prior_D"] = PriorDiscriminator(cfg.model.y_dim, self.opts.prior.hidden)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        o = cfg.objective
        check_prior(o.prior, "objective.prior")

    def phases(self) -> list[Phase]:
        # adversarial 0: no adversarial phase at all (a zero-gradient Adam step would still
        # move the encoder by its momentum); prior_D still trains, so its bound is logged.
        adversarial = [Phase("adversarial", ("encoder",), data="previous")] if self.opts.adversarial > 0 else []
        return [Phase("reconstruction", ("encoder", "decoder")), Phase("prior", ("prior_D",), data="previous"),
                *adversarial]

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Codes for sampling: the prior the encoder was matched to (on the CPU when seeded)."""
        return sample_prior(self.opts.prior, n, self.cfg.model.y_dim, generator=generator)

    def latent_law(self) -> str:
        return describe_prior(self.opts.prior)

    def prior_samples(self, n: int, dim: int) -> Tensor:
        """Training samples of the prior from the process's RNG, on the device."""
        return sample_prior(self.opts.prior, n, dim, self.device)

    def reconstruction_loss(self, x_hat: Tensor, x: Tensor) -> Tensor:
        per_image = squared_error(x_hat, x)
        if self.opts.reconstruction == "cortex":
            # mean over pixels, divided again by the (global) batch size: the same for any
            # number of processes, since the trainer averages the per-process means
            return per_image.mean() / x[0].numel() / self.cfg.train.batch_size
        return per_image.mean()

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        x, o = batch.x, self.opts
        if phase == "reconstruction":
            y = self.encoder(x)["y"]
            recon = self.reconstruction_loss(self.nets["decoder"](y), x)
            return {"loss": recon, "y_mean": y.detach().float().mean(), "y_std": y.detach().float().std()}
        if phase == "prior":
            with torch.no_grad(), frozen_bn_stats(self.encoder):  # the other phases update them
                y = self.encoder(x)["y"]
            v = self.prior_samples(len(y), y.shape[1])
            scale = self.penalty_scale(phase)
            return lazy_penalty_log(discriminator_loss(self.nets["prior_D"], v, y, o.prior.penalty * scale,
                                                       o.penalty_on), scale)
        if phase != "adversarial":
            raise ValueError(f"aae has phases reconstruction, prior and adversarial, got '{phase}'")
        with frozen_bn_stats(self.encoder):  # the reconstruction phase saw this batch already
            y = self.encoder(x)["y"]
        adv = encoder_loss(self.nets["prior_D"], y, o.prior.encoder_loss)
        return {"loss": o.adversarial * adv, "adversarial": adv.detach()}
