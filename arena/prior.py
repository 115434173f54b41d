"""Prior matching (paper eq. 7): a discriminator tells samples of a target
distribution V from an encoder's outputs; the encoder is trained to fool it, so its
push-forward distribution U matches V. DIM uses it with a uniform box prior; the
implicit-encoder generator uses two of them with Gaussian targets (eq. 11-12)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .losses import contractive_penalty, d_loss_jsd, g_loss_nonsaturating, g_loss_saturating
from .registry import ConfigError, Registry
from .schema import Count, NonNegative, Positive

# How the encoder fools the discriminator: -log D, or log(1 - D) as eq. 7 is written.
EncoderLoss = Literal["nonsaturating", "saturating"]
Activation = Literal["relu", "leaky_relu"]  # hidden activation of a PriorDiscriminator (slope 0.2)


@dataclass
class PriorConfig:
    name: str = "uniform"  # uniform | gaussian
    low: float = 0.0  # uniform: the box [low, high]^d
    high: float = 1.0
    mean: float = 0.0  # gaussian: N(mean, std^2 I)
    std: Positive = 1.0
    hidden: list[Count] = field(default_factory=lambda: [1000, 200])  # discriminator widths (Table 9)
    encoder_loss: EncoderLoss = "nonsaturating"
    penalty: NonNegative = 0.0  # squared input-gradient penalty on the discriminator (official DIM code: 1.0)


PRIORS: Registry = Registry("prior")


# Where samples are drawn: seeded (a generator) on the generator's device (the CPU), so a
# seeded draw does not depend on the device; in training (no generator) on `device`
# itself, like the training noise: a host-to-device copy every step would wait for the GPU.
def gaussian(n: int, dim: int, mean: float = 0.0, std: float = 1.0, device=None, generator=None) -> Tensor:
    """n samples of N(mean, std^2 I) in R^dim."""
    at = generator.device if generator is not None else device
    return (mean + std * torch.randn(n, dim, generator=generator, device=at)).to(device)


def uniform(n: int, dim: int, low: float = 0.0, high: float = 1.0, device=None, generator=None) -> Tensor:
    """n samples of U[low, high]^dim."""
    at = generator.device if generator is not None else device
    return (low + (high - low) * torch.rand(n, dim, generator=generator, device=at)).to(device)


PRIORS.register("uniform")(lambda cfg, n, dim, device, generator: uniform(n, dim, cfg.low, cfg.high, device, generator))
PRIORS.register("gaussian")(lambda cfg, n, dim, device, generator: gaussian(n, dim, cfg.mean, cfg.std, device,
                                                                           generator))


def sample_prior(cfg: PriorConfig, n: int, dim: int, device=None, generator=None) -> Tensor:
    """n samples of the configured target (drawn where `gaussian` / `uniform` say)."""
    return PRIORS.get(cfg.name, key="prior.name")(cfg, n, dim, device, generator)


def describe_prior(cfg: PriorConfig) -> str:
    """The target in words, for people reading a card: 'uniform on [0, 1]^d', 'N(0, 1^2 I)'."""
    if cfg.name == "uniform":
        return f"uniform on [{cfg.low:g}, {cfg.high:g}]^d"
    return f"N({cfg.mean:g}, {cfg.std:g}^2 I)"


def check_prior(cfg: PriorConfig, key: str) -> None:
    PRIORS.get(cfg.name, key=f"{key}.name")
    if cfg.name == "uniform" and not cfg.high > cfg.low:
        raise ConfigError(f"{key}: need high > low, got [{cfg.low}, {cfg.high}]")


ACTIVATIONS: dict[str, type] = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}  # keys: Activation


class PriorDiscriminator(nn.Module):
    """MLP dim -> hidden... -> 1 with ReLU (the paper's Table 9: 1000-200-1) or
    LeakyReLU(0.2)."""

    def __init__(self, dim: int, hidden: list[int], activation: Activation = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(dim, width), act()]
            dim = width
        layers.append(nn.Linear(dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        return self.net(y)


PenaltySide = Literal["both", "prior"]  # where discriminator_loss penalizes D's input gradient


def discriminator_loss(D: nn.Module, v: Tensor, y: Tensor, penalty_weight: float = 0.0,
                       penalty_on: PenaltySide = "both") -> dict[str, Tensor]:
    """D's side: maximize E_V[log D(v)] + E_U[log(1 - D(y))] (eq. 7) between prior
    samples v (real) and encoder outputs y (fake, detached here).

    With penalty_weight > 0, adds penalty_weight * (R(v) + R(y)) / 2, R(x) = E ||dD/dx||^2
    on both sides, as the official DIM code regularizes its prior discriminator;
    penalty_on="prior": penalty_weight * R(v), the prior samples only (cortex's AAE)."""
    y = y.detach()
    if penalty_weight > 0 and penalty_on == "prior":
        penalty, real = contractive_penalty(D, v)
        fake = D(y)
    elif penalty_weight > 0:
        r_v, real = contractive_penalty(D, v)
        r_y, fake = contractive_penalty(D, y)
        penalty = 0.5 * (r_v + r_y)
    else:
        real, fake, penalty = D(v), D(y), y.new_zeros(())
    d_loss = d_loss_jsd(real, fake)  # E sp(-D(v)) + E sp(D(y))
    return {
        "loss": d_loss + penalty_weight * penalty,
        "d_prior": -d_loss.detach(),  # the JSD bound, 2 JSD - log 4: -> 0 as D separates
        "penalty": penalty.detach(),
        "d_real": real.detach().mean(),  # mean logits; > 0 means "prior"
        "d_fake": fake.detach().mean(),
    }


def lazy_penalty_log(out: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """A penalty skipped by lazy regularization (scale 0, Objective.penalty_scale) was not
    computed: log none for the run, rather than a 0 that would pull the logged mean down."""
    if scale == 0:
        out.pop("penalty", None)
    return out


def encoder_loss(D: nn.Module, y: Tensor, kind: EncoderLoss = "nonsaturating") -> Tensor:
    """The encoder's side: make its outputs look like prior samples to D (`kind`: -log D,
    or log(1 - D) as eq. 7 is written)."""
    fake = D(y)
    if kind == "saturating":
        return g_loss_saturating(fake)
    return g_loss_nonsaturating(fake)
