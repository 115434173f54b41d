"""`prior_match`: train an encoder so that its outputs are distributed as a prior
(paper eq. 7, alone). The mechanism DIM and the implicit-encoder generator share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .nets import ConvEncoder
from .objective import OBJECTIVES, Batch, DataInfo, LazyPenalty, Objective, Phase
from .prior import PriorConfig, PriorDiscriminator, check_prior, discriminator_loss, encoder_loss, lazy_penalty_log, sample_prior
from .registry import ConfigError
from .schema import Count


@dataclass
class PriorMatchModel:
    width: Count = 32  # channels of the first conv; doubles at each halving
    out_dim: Count = 8  # dimension of the encoder's output (and of the prior)


@dataclass
class PriorMatchOptions(LazyPenalty):  # penalty_every: lazy regularization of D's penalty
    name: str = "prior_match"
    prior: PriorConfig = field(default_factory=PriorConfig)
    sigmoid: bool = False  # squash the encoder output before matching (as DIM does for a uniform prior)


@OBJECTIVES.register("prior_match")
class PriorMatch(Objective):
    Model = PriorMatchModel
    Options = PriorMatchOptions
    main_player = "E"

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        m = cfg.model
        self.nets["E"] = ConvEncoder(info.channels, info.resolution, m.out_dim, m.width)
        self.nets["D"] = PriorDiscriminator(m.out_dim, self.opts.prior.hidden)

    @classmethod
    def check_config(cls, cfg) -> None:
        check_prior(cfg.objective.prior, "objective.prior")
        r = cfg.data.resolution
        if r < 4 or r & (r - 1):
            raise ConfigError(f"data.resolution: prior_match's encoder needs a power of two >= 4, got {r}")

    def phases(self) -> list[Phase]:
        return [Phase("discriminator", ("D",)), Phase("encoder", ("E",))]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        y = self.nets["E"](x)
        return torch.sigmoid(y) if self.opts.sigmoid else y

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, torch.Tensor]:
        y, prior = self.encode(batch.x), self.opts.prior
        if phase == "discriminator":
            v = sample_prior(prior, len(y), y.shape[1], y.device)
            scale = self.penalty_scale(phase)
            return lazy_penalty_log(discriminator_loss(self.nets["D"], v, y, prior.penalty * scale), scale)
        loss = encoder_loss(self.nets["D"], y, prior.encoder_loss)
        return {"loss": loss, "y_mean": y.detach().mean(), "y_std": y.detach().std()}
