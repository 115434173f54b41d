"""`ie`: the implicit-encoder generator (paper appendix A.7, eq. 11-13).

An encoder E maps images to R^out_dim (1 in the paper). Two discriminators on E's
output, T_P and T_Q, play the core's prior matching: T_P separates N(mu_P, 1) from
E(x_real), T_Q separates N(mu_Q, 1) from E(G(z)), both with the JSD f-GAN bound
(eq. 12); E is trained to fool both, with a contractive penalty. G is not in a minimax
game with E: it only moves the mean of E(G(z)) toward a target (eq. 13),

    min_G (E_z[E(G(z))] - target)^2,  target = mu_P (eq. 13) or the batch mean of E(x_real).

The paper leaves most choices open; each is an option here (docs/generators.md has
the ablation that picked the defaults where the paper is silent):

    g_target         mu_p (eq. 13) | real_mean (the authors' prototype, rdevon/cortex
                     arch/vral.py: where E does not put real data at mu_P, eq. 13
                     pushes G past the data); real_mean draws a third data batch per step
    contractive_on   real | fake | both (summed): where E's input gradient is penalized
    t_clip_norm      gradient-norm clipping of T_P and T_Q (A.8 "gradient clipping on the
    t_clip           discriminators"): each net on its own or both together (one norm)
    t_penalty        squared input-gradient penalty on T_P and T_Q, at the prior samples
                     and at E's outputs (as the prototype regularized T instead)
    t_hidden, t_activation   T's MLP
    mu_p, mu_q       the targets: their overlap sets the encoder's strength (A.7)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from arena.losses import contractive_penalty
from arena.objective import OBJECTIVES, Batch, LazyPenalty, Phase
from arena.prior import Activation, EncoderLoss, PriorDiscriminator, discriminator_loss, encoder_loss, gaussian
from arena.schema import Count, NonNegative

from .base import GeneratorObjective, GeneratorOptions



@dataclass
class IEOptions(GeneratorOptions, LazyPenalty):  # penalty_every: the contractive penalty, lazily on E steps
    name: str = "ie"
    mu_p: float = 1.0  # target mean of E on real data; the paper gives no values: we choose
    mu_q: float = -1.0  # +-1, so the unit-variance targets overlap (A.7: the overlap fixes E's strength)
    g_target: Literal["mu_p", "real_mean"] = "mu_p"  # what G pulls the mean of E(G(z)) to (mu_p: eq. 13)
    contractive: NonNegative = 10.0  # weight of the contractive penalty on E (R1's default in Mescheder et al. 2018)
    contractive_on: Literal["real", "fake", "both"] = "real"  # the inputs at which E's gradient is penalized
    t_hidden: list[Count] = field(default_factory=lambda: [256, 256])  # T_P, T_Q MLP widths ("small")
    t_activation: Activation = "relu"
    t_clip_norm: NonNegative = 1.0  # gradient clipping on T_P and T_Q (A.8); 0 = off
    t_clip: Literal["each", "together"] = "each"  # each: T_P and T_Q clipped on their own; together: one norm
    t_penalty: NonNegative = 0.0  # gradient penalty on T_P, T_Q at both inputs; 0 = off
    encoder_loss: EncoderLoss = "nonsaturating"  # how E fools T_P/T_Q


@OBJECTIVES.register("ie")
class ImplicitEncoder(GeneratorObjective):
    Options = IEOptions
    image_net = "E"

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        o, dim = self.opts, cfg.model.out_dim
        self.nets["T"] = nn.ModuleDict({side: PriorDiscriminator(dim, o.t_hidden, o.t_activation)
                                        for side in ("P", "Q")})

    def phases(self) -> list[Phase]:
        return [Phase("discriminators", ("T",)), Phase("encoder", ("E",)),
                Phase("generator", ("G",), data="fresh" if self.opts.g_target == "real_mean" else "none")]

    def clip_norms(self) -> dict[str, float]:
        return {"T": self.opts.t_clip_norm}

    def clip_groups(self, player: str) -> list[nn.Module]:
        # Clipped together, a large gradient of one discriminator shrinks the other's step.
        if player == "T" and self.opts.t_clip == "each":
            return list(self.nets["T"].values())
        return super().clip_groups(player)

    def generator_target(self, batch: Batch | None) -> Tensor:
        """mu_P (eq. 13), or the batch mean of E on real data (no gradient to E or G)."""
        if self.opts.g_target == "mu_p":
            return torch.tensor(self.opts.mu_p, device=self.device)
        with torch.no_grad():
            return self.nets["E"](batch.x).mean(0)

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        E, T = self.nets["E"], self.nets["T"]
        if phase == "generator":
            target = self.generator_target(batch)
            y_fake = E(self.nets["G"](self.noise(batch_size)))
            mean = y_fake.mean(0)
            return {"loss": (mean - target).pow(2).sum(), "E_fake": mean.detach().mean(),
                    "target": target.detach().mean()}
        with torch.no_grad():
            x_fake = self.nets["G"](self.noise(batch.x.shape[0]))
        if phase == "discriminators":
            with torch.no_grad():
                y_real, y_fake = E(batch.x), E(x_fake)
            o, d = self.opts, y_real.shape[1]
            p = discriminator_loss(T["P"], gaussian(len(y_real), d, o.mu_p, device=y_real.device), y_real, o.t_penalty)
            q = discriminator_loss(T["Q"], gaussian(len(y_fake), d, o.mu_q, device=y_fake.device), y_fake, o.t_penalty)
            return {"loss": p["loss"] + q["loss"], "jsd_P": p["d_prior"], "jsd_Q": q["d_prior"]}
        # encoder: fool T_P on real data and T_Q on generated data; contractive penalty
        # E ||dE/dx||^2 at real and/or generated inputs (summed when both)
        on = self.opts.contractive_on
        penalty = batch.x.new_zeros(())
        scale = self.penalty_scale(phase)  # lazy regularization: 0 on a skipped run
        weight = self.opts.contractive * scale
        if weight > 0 and on in ("real", "both"):
            r, y_real = contractive_penalty(E, batch.x)  # reuses the forward for the main loss
            penalty = penalty + r
        else:
            y_real = E(batch.x)
        if weight > 0 and on in ("fake", "both"):
            r, y_fake = contractive_penalty(E, x_fake)
            penalty = penalty + r
        else:
            y_fake = E(x_fake)
        kind = self.opts.encoder_loss
        fool = encoder_loss(T["P"], y_real, kind) + encoder_loss(T["Q"], y_fake, kind)
        out = {"loss": fool + weight * penalty, "penalty": penalty.detach(),
               "E_real": y_real.detach().mean(), "E_fake": y_fake.detach().mean()}
        if scale == 0:
            del out["penalty"]  # not computed this run: logged over the runs that did
        return out
