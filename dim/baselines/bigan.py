"""`bigan`: the bidirectional GAN (Donahue et al. 2017; ALI, Dumoulin et al. 2017, with a
deterministic encoder), the paper's BiGAN rows (Tables 1-3). It is an encoder objective
(features() from the DIM encoder E) and a generator (samples and FID from G).

    z ~ N(0, I_y_dim) (sec. 4.2: a spherical Gaussian input prior);  G = the DCGAN decoder
    D(x, z): joint discriminator; D maximizes  E log s(D(x, E(x))) + E log(1 - s(D(G(z), z)))
             minus penalty_weight * E_x ||d D(x, E(x)) / dx||^2 at the real pairs (E(x) fixed)
    E and G (one phase, same batch):
      nonsaturating (default; the BiGAN / ALI papers, jeffdonahue/bigan): inverted labels
             E softplus(D(x, E(x))) + E softplus(-D(G(z), z))
      minimax (cortex ali.py, the authors' runs): minimize the D objective itself
             E log s(D(x, E(x))) + E log(1 - s(D(G(z), z)))

Logged: recon_ratio = mean ||x - G(E(x))|| / mean ||x' - G(E(x))|| for x' another image of
the batch (Donahue et al.'s check: about 1 while G ignores E, below 1 as E inverts G).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from arena.losses import contractive_penalty, d_loss_jsd, g_loss_nonsaturating, jsd_bound
from arena.objective import OBJECTIVES, Batch, DataInfo, LazyPenalty, Phase
from arena.schema import Count, NonNegative

from ..encoders import ENCODERS, scaled
from ..objective import frozen_bn_stats
from .common import BaselineModel, BaselineObjective

GELoss = Literal["nonsaturating", "minimax"]  # nonsaturating: the BiGAN / ALI papers; minimax: cortex


@dataclass
class BiGANModel(BaselineModel):
    # cortex ali.py: x path = the encoder's conv stack without BN, then linear to 256;
    # z path = FC y_dim -> 256; concatenated, then FC 512-128-1
    d_units: Count = 256  # each path's output
    d_hidden: list[Count] = field(default_factory=lambda: [512, 128])  # after the concatenation


@dataclass
class BiGANOptions(LazyPenalty):  # penalty_every: lazily on the D steps
    name: str = "bigan"
    ge_loss: GELoss = "nonsaturating"
    penalty_weight: NonNegative = 0.5  # contractive penalty on x at real pairs (cortex ali.py)


def ge_loss(real: Tensor, fake: Tensor, kind: GELoss = "nonsaturating") -> Tensor:
    """E and G's loss from D's logits on real pairs (x, E(x)) and generated pairs (G(z), z)."""
    if kind == "minimax":
        return jsd_bound(real, fake)  # E log s(real) + E log(1 - s(fake)) = -E sp(-real) - E sp(fake)
    # labels swapped: -E log(1 - s(real)) - E log s(fake) = E sp(real) + E sp(-fake)
    return g_loss_nonsaturating(-real) + g_loss_nonsaturating(fake)


class JointDiscriminator(nn.Module):
    """D(x, z) -> [B, 1]: the encoder architecture's conv stack (no batch norm, LeakyReLU 0.2
    as in ALI's discriminators) -> Linear to d_units; z -> Linear d_units; concatenated ->
    hidden Linear + LeakyReLU layers -> 1."""

    def __init__(self, arch: str, channels: int, resolution: int, width: float, z_dim: int,
                 units: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for s in ENCODERS.get(arch, key="model.encoder").convs:
            layers += [nn.Conv2d(c, scaled(s.channels, width), s.kernel, s.stride, s.pad), nn.LeakyReLU(0.2)]
            if s.pool:
                layers.append(nn.MaxPool2d(3, 2))
            c = scaled(s.channels, width)
        self.x_convs = nn.Sequential(*layers)
        with torch.no_grad():  # the flattened size, from the tensor (sizes are not hard-coded)
            n = self.x_convs(torch.zeros(1, channels, resolution, resolution)).numel()
        self.x_out = nn.Sequential(nn.Linear(n, units), nn.LeakyReLU(0.2))
        self.z_path = nn.Sequential(nn.Linear(z_dim, units), nn.LeakyReLU(0.2))
        joint: list[nn.Module] = []
        n = 2 * units
        for width_out in hidden:
            joint += [nn.Linear(n, width_out), nn.LeakyReLU(0.2)]
            n = width_out
        joint.append(nn.Linear(n, 1))
        self.joint = nn.Sequential(*joint)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h = torch.cat([self.x_out(self.x_convs(x).flatten(1)), self.z_path(z.flatten(1))], 1)
        return self.joint(h)


@OBJECTIVES.register("bigan")
class BiGAN(BaselineObjective):
    Model = BiGANModel
    Options = BiGANOptions
    decoder_player = "G"

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        m = cfg.model
        self.nets["encoder"] = self.encoder_player(info)
        self.nets["G"] = self.build_decoder(info)
        self.nets["D"] = JointDiscriminator(m.encoder, info.channels, info.resolution, m.width, m.y_dim,
                                            m.d_units, m.d_hidden)

    def phases(self) -> list[Phase]:
        return [Phase("discriminator", ("D",)), Phase("generator", ("encoder", "G"), data="previous")]

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        x = batch.x
        D, G, E = self.nets["D"], self.nets["G"], self.encoder
        if phase == "discriminator":
            with torch.no_grad(), frozen_bn_stats(E), frozen_bn_stats(G):  # the generator phase updates them
                e_x = E(x)["y"]
                z = self.noise(len(x), e_x.shape[1])
                x_fake = G(z)
            weight = self.opts.penalty_weight * self.penalty_scale(phase)  # 0 on a lazily skipped step
            if weight > 0:
                penalty, real = contractive_penalty(lambda x_: D(x_, e_x), x)
            else:
                real, penalty = D(x, e_x), None
            fake = D(x_fake, z)
            out = {"loss": d_loss_jsd(real, fake), "D_real": real.detach().mean(), "D_fake": fake.detach().mean()}
            if penalty is not None:
                out["loss"] = out["loss"] + weight * penalty
                out["penalty"] = penalty.detach()
            return out
        if phase != "generator":
            raise ValueError(f"bigan has phases discriminator and generator, got '{phase}'")
        e_x = E(x)["y"]
        z = self.noise(len(x), e_x.shape[1])
        real, fake = D(x, e_x), D(G(z), z)
        return {"loss": ge_loss(real, fake, self.opts.ge_loss), "D_real": real.detach().mean(),
                "D_fake": fake.detach().mean(), "recon_ratio": self.reconstruction_ratio(x, e_x.detach())}

    @torch.no_grad()
    def reconstruction_ratio(self, x: Tensor, e_x: Tensor) -> Tensor:
        """mean ||x - G(E(x))|| / mean ||x' - G(E(x))||, x' = the batch rolled by one image."""
        G = self.nets["G"]
        with frozen_bn_stats(G):  # a measurement: the running statistics stay as training left them
            x_hat = G(e_x).float()
        own = (x.float() - x_hat).flatten(1).norm(dim=1).mean()
        other = (x.float().roll(1, 0) - x_hat).flatten(1).norm(dim=1).mean()
        return own / other
