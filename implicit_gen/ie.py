"""`ie`: the implicit-encoder generator (paper appendix A.7, eq. 11-13).

An encoder E maps images to R^out_dim (1 in the paper). Two discriminators on E's
output, T_P and T_Q, play the core's prior matching: T_P separates N(mu_P, 1) from
E(x_real), T_Q separates N(mu_Q, 1) from E(G(z)), both with the JSD f-GAN bound
(eq. 12); E is trained to fool both, with a contractive penalty. G is not in a minimax
game with E: it only moves the mean of E(G(z)) toward mu_P (eq. 13),

    min_G (E_z[E(G(z))] - mu_P)^2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from arena.losses import contractive_penalty
from arena.objective import OBJECTIVES, Batch, Phase
from arena.prior import PriorDiscriminator, discriminator_loss, encoder_loss, gaussian

from .base import GeneratorObjective


@dataclass
class IEOptions:
    name: str = "ie"
    mu_p: float = 1.0  # target mean of E on real data; the paper gives no values: we choose
    mu_q: float = -1.0  # +-1, so the unit-variance targets overlap (A.7: the overlap fixes E's strength)
    contractive: float = 10.0  # weight of the contractive penalty on E (R1's default in Mescheder et al. 2018)
    t_hidden: list[int] = field(default_factory=lambda: [256, 256])  # T_P, T_Q MLP widths ("small")
    t_clip_norm: float = 1.0  # gradient clipping on T_P and T_Q (A.8); 0 = off
    encoder_loss: str = "nonsaturating"  # how E fools T_P/T_Q: nonsaturating | saturating


@OBJECTIVES.register("ie")
class ImplicitEncoder(GeneratorObjective):
    Options = IEOptions
    image_net = "E"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        o, dim = self.opts, cfg.model.out_dim
        self.nets["T"] = nn.ModuleDict({"P": PriorDiscriminator(dim, o.t_hidden),
                                        "Q": PriorDiscriminator(dim, o.t_hidden)})

    def phases(self) -> list[Phase]:
        return [Phase("discriminators", ("T",)), Phase("encoder", ("E",)),
                Phase("generator", ("G",), data="none")]

    def clip_norms(self) -> dict[str, float]:
        return {"T": self.opts.t_clip_norm}

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        E, T = self.nets["E"], self.nets["T"]
        if phase == "generator":
            y_fake = E(self.nets["G"](self.noise(batch_size)))
            mean = y_fake.mean(0)
            return {"loss": (mean - self.opts.mu_p).pow(2).sum(), "E_fake": mean.detach().mean()}
        with torch.no_grad():
            x_fake = self.nets["G"](self.noise(batch.x.shape[0]))
        if phase == "discriminators":
            with torch.no_grad():
                y_real, y_fake = E(batch.x), E(x_fake)
            o, d = self.opts, y_real.shape[1]
            p = discriminator_loss(T["P"], gaussian(len(y_real), d, o.mu_p, device=y_real.device), y_real)
            q = discriminator_loss(T["Q"], gaussian(len(y_fake), d, o.mu_q, device=y_fake.device), y_fake)
            return {"loss": p["loss"] + q["loss"], "jsd_P": p["d_prior"], "jsd_Q": q["d_prior"]}
        # encoder: fool T_P on real data and T_Q on generated data, contractive on real inputs
        penalty, y_real = contractive_penalty(E, batch.x)
        y_fake = E(x_fake)
        kind = self.opts.encoder_loss
        fool = encoder_loss(T["P"], y_real, kind) + encoder_loss(T["Q"], y_fake, kind)
        return {"loss": fool + self.opts.contractive * penalty, "penalty": penalty.detach(),
                "E_real": y_real.detach().mean(), "E_fake": y_fake.detach().mean()}
