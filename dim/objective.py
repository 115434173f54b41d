"""The Deep InfoMax objective `dim` (paper sec. 3, 4.3; App. A.1, A.2, A.6; eq. 8).

    maximize   alpha * I_G(X; Y)  +  beta * 1/M^2 sum_i I_L(C^(i)(X); Y)      (eqs. 3, 6)
    minimize   gamma * D_phi(V || U_psi,P)  against a prior discriminator    (eq. 7)
    minimize   coord_weight * CE(coordinates | y, local features)          (sec. 4.3)

Players: ``encoder`` (the encoder with every critic and predictor that maximizes MI with
it, eq. 8) and ``prior_D`` (if gamma > 0). Schedule: ``prior`` on a fresh batch, then
``encoder`` on the same batch. Players, schedule, occlusion and where the sigmoid goes
are explained in docs/dim.md, "The dim objective".

N processes: the MI critics score the gathered global batch (arena.distributed.gather,
differentiable), so the JSD / NCE / DV terms and their gradients equal one process's on
the same global batch; `model.sync_bn: true` also makes the encoder's (and coordinate
predictors') batch norm use global-batch statistics, which that equality needs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from arena.distributed import convert_sync_batchnorm, gather
from arena.nets import eval_mode
from arena.objective import OBJECTIVES, Batch, DataInfo, LazyPenalty, Objective, Phase, resolve_schedule
from arena.prior import PriorConfig, PriorDiscriminator, check_prior, discriminator_loss, encoder_loss, lazy_penalty_log, sample_prior
from arena.registry import ConfigError
from arena.schema import Count, NonNegative, NonNegativeInt

from .coords import Coord, CoordinatePredictor, coord_modes, coordinate_loss
from .critics import LOCAL_CRITICS, GlobalCritic, build_local_critic
from .encoders import ConvEncoder, build_encoder, encoder_spec
from .estimators import ESTIMATORS
from .occlusion import check_block, occlusion_mask

SUBSAMPLING = ("jsd", "nce")  # the estimators that take max_negatives (Fig. 8)


@dataclass
class EncoderModel:
    """The model section of DIM and the baselines: the DIM encoder they train (dim.encoders)."""

    encoder: str = "dcgan32"  # dcgan32 (32 or 16 px) | alexnet64 (64 px): the DIM rows' encoders (A.1)
    width: float = 1.0  # multiplies the encoder's hidden widths (dim: its critics' and coordinate predictor's too)
    y_dim: int = 64  # size of Y, the global vector (the baselines' code)
    sync_bn: bool = False  # N processes: batch norm over the global batch (the nets that see one process's slice)


@dataclass
class DIMModel(EncoderModel):
    local_layer: str | None = None  # conv map for local DIM; None = the arch's default (A.1)
    local_critic: str = "encode_dot"  # encode_dot (Tables 1, 2, 4) | concat_convolve (Table 3, ablations)
    mi_units: Count = 2048  # encode-and-dot embedding size (Tables 7-8)
    concat_units: Count = 512  # concat-and-convolve hidden 1x1 convs (Table 6)
    global_units: Count = 512  # global critic hidden layers (Table 5)
    coord_hidden: Count = 512  # coordinate predictor hidden layers (A.6)


def _dim_prior() -> PriorConfig:
    # Official code: uniform prior, discriminator 1000-200-1, non-saturating encoder
    # loss, squared input-gradient penalty of weight 1.0 on the discriminator.
    return PriorConfig(name="uniform", low=0.0, high=1.0, hidden=[1000, 200],
                       encoder_loss="nonsaturating", penalty=1.0)


@dataclass
class DIMOptions(LazyPenalty):  # penalty_every: lazy regularization of prior_D's penalty
    name: str = "dim"
    estimator: str = "jsd"  # jsd | nce | dv (dim.estimators.ESTIMATORS)
    alpha: NonNegative = 0.0  # global MI weight
    beta: NonNegative = 1.0  # local MI weight
    gamma: NonNegative = 0.1  # prior matching weight
    max_negatives: NonNegativeInt = 0  # jsd / nce: negative images per image (0 = all others in the batch; Fig. 8)
    prior: PriorConfig = field(default_factory=_dim_prior)
    prior_sigmoid: bool = True  # squash Y into (0, 1) in the prior branch only
    occlude: bool = False  # global vector from an occluded copy of the input (sec. 4.3)
    # occlusion cell size in pixels; None = the receptive field of the local features (A.6's
    # choice: 10 for dcgan32's conv2, 21 for alexnet64's conv3), filled in by check_config
    # so that the saved config holds the size used
    occlusion_block: Count | None = None
    coord: Coord = "none"
    coord_weight: NonNegative = 1.0


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Batch norm layers normalize with batch statistics but do not update their running
    statistics: momentum 0 gives running <- 1 * running + 0 * batch, and the batch counter
    is put back, so the buffers are bit-for-bit unchanged."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class EncoderObjective(Objective):
    """An objective whose `encoder` player holds a DIM encoder under the key 'encoder'."""

    main_player = "encoder"

    @classmethod
    def check_config(cls, cfg) -> None:
        """The encoder the config asks for can be built (dim.encoders.encoder_spec decides)."""
        m = cfg.model
        encoder_spec(m.encoder, resolution=cfg.data.resolution, local_layer=getattr(m, "local_layer", None),
                     width=m.width, y_dim=m.y_dim)

    @staticmethod
    def build_encoder(cfg, info: DataInfo) -> ConvEncoder:
        m = cfg.model
        return build_encoder(m.encoder, channels=info.channels, resolution=info.resolution, y_dim=m.y_dim,
                             width=m.width, local_layer=getattr(m, "local_layer", None))

    def synced(self, net: nn.Module) -> nn.Module:
        """`net` with global-batch batch norm if model.sync_bn (what N processes = 1 needs)."""
        return convert_sync_batchnorm(net) if self.cfg.model.sync_bn else net

    def encoder_player(self, info: DataInfo, **extra: nn.Module) -> nn.ModuleDict:
        """The `encoder` player: the DIM encoder (synced) and the nets in `extra` after it."""
        return nn.ModuleDict({"encoder": self.synced(self.build_encoder(self.cfg, info)), **extra})

    @property
    def encoder(self) -> ConvEncoder:
        return self.nets["encoder"]["encoder"]

    @torch.no_grad()
    def features(self, x: Tensor, ema: bool = False) -> dict[str, Tensor]:
        """x [B, C, H, W] in [-1, 1] -> {'conv': [B, C*h*w] (last conv map, flattened),
        'fc': [B, units], 'y': [B, y_dim]}: the probe points of Tables 1-3, computed in eval
        mode (batch norm running statistics) without gradients. The caller batches."""
        with eval_mode(self.net("encoder", ema)["encoder"]) as enc:
            return probe_points(enc(x.to(self.device)))


def probe_points(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's outputs as features() gives them: conv flattened, fc and y as they are."""
    return {"conv": out["conv"].flatten(1), "fc": out["fc"], "y": out["y"]}


@OBJECTIVES.register("dim")
class DIM(EncoderObjective):
    Model = DIMModel
    Options = DIMOptions

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        m, o = cfg.model, self.opts
        enc = self.build_encoder(cfg, info)
        player = nn.ModuleDict({"encoder": enc})
        if o.alpha > 0:
            player["global_critic"] = GlobalCritic(m.y_dim, enc.feature_dims["conv"], m.global_units, m.width)
        if o.beta > 0:
            units = m.mi_units if m.local_critic == "encode_dot" else m.concat_units
            player["local_critic"] = build_local_critic(m.local_critic, global_dim=m.y_dim,
                                                        local_channels=enc.local_channels, units=units,
                                                        width=m.width)
        for mode in coord_modes(o.coord):
            player[f"coord_{mode}"] = CoordinatePredictor(m.y_dim, enc.local_channels, enc.local_shape[1:],
                                                          mode, m.coord_hidden, m.width)
        if m.sync_bn:
            # The nets that see this process's slice of the batch; the MI critics see the
            # gathered global batch already (encoder_terms), so their batch norm stays local.
            for name, net in player.items():
                if name == "encoder" or name.startswith("coord_"):
                    convert_sync_batchnorm(net)
        self.nets["encoder"] = player
        if o.gamma > 0:
            self.nets["prior_D"] = PriorDiscriminator(m.y_dim, o.prior.hidden)
        self._estimator = ESTIMATORS.get(o.estimator, key="objective.estimator")

    # -- config -------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        m, o = cfg.model, cfg.objective
        ESTIMATORS.get(o.estimator, key="objective.estimator")
        LOCAL_CRITICS.get(m.local_critic, key="model.local_critic")
        if not (o.alpha > 0 or o.beta > 0):
            raise ConfigError(f"objective.alpha / objective.beta: at least one MI term must be on "
                              f"(got alpha={o.alpha}, beta={o.beta}); DIM(G) is alpha 1, beta 0, "
                              f"DIM(L) alpha 0, beta 1")
        if o.max_negatives > 0 and o.estimator not in SUBSAMPLING:
            raise ConfigError(f"objective.max_negatives: only the {' and '.join(SUBSAMPLING)} estimators "
                              f"subsample negatives; {o.estimator} uses all of them (set it to 0)")
        if cfg.train.batch_size < 2:
            raise ConfigError(f"train.batch_size: DIM needs >= 2 images per batch (negatives are the "
                              f"other images), got {cfg.train.batch_size}")
        if o.occlusion_block is None:
            spec = encoder_spec(m.encoder, resolution=cfg.data.resolution)
            o.occlusion_block = spec.receptive_field(m.local_layer or spec.default_local)
        if o.occlude:
            check_block(o.occlusion_block, cfg.data.resolution)
        if o.gamma > 0:
            check_prior(o.prior, "objective.prior")
        resolve_schedule(cls.declared_phases(o), cfg.train.phases, o.name)  # train.phases before any work

    @staticmethod
    def declared_phases(o: DIMOptions) -> list[Phase]:
        if o.gamma > 0:  # one batch per step: the encoder phase takes the prior phase's batch
            return [Phase("prior", ("prior_D",)), Phase("encoder", ("encoder",), data="previous")]
        return [Phase("encoder", ("encoder",))]

    def phases(self) -> list[Phase]:
        return self.declared_phases(self.opts)

    # -- losses -------------------------------------------------------------------
    def mi(self, scores: Tensor) -> Tensor:
        """The configured estimator's MI estimate (to maximize) from [N, N, L] scores."""
        if self.opts.max_negatives > 0:  # jsd or nce (check_config)
            return self._estimator(scores, max_negatives=self.opts.max_negatives)
        return self._estimator(scores)

    def prior_input(self, y: Tensor) -> Tensor:
        return torch.sigmoid(y) if self.opts.prior_sigmoid else y

    def prior_discriminator_loss(self, y: Tensor) -> dict[str, Tensor]:
        """prior_D maximizes the JSD bound between prior samples and codes (eq. 7), with
        the core's penalty on both sides as in the official code."""
        prior = self.opts.prior
        v = sample_prior(prior, len(y), y.shape[1], y.device)
        scale = self.penalty_scale("prior")
        return lazy_penalty_log(discriminator_loss(self.nets["prior_D"], v, y, prior.penalty * scale), scale)

    def encoder_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Each active term of the encoder's objective, before weighting: global_mi and
        local_mi (estimates, to maximize), prior (the encoder's prior loss, to minimize),
        coord (summed cross-entropies, to minimize)."""
        o, player = self.opts, self.nets["encoder"]
        enc = player["encoder"]
        out = enc(x)
        y_global = out["y"]
        if o.occlude:
            mask = occlusion_mask(x.shape[0], x.shape[-1], o.occlusion_block, device=x.device)
            with frozen_bn_stats(enc):  # running statistics describe clean images only
                y_global = enc(x * mask)["y"]
        terms: dict[str, Tensor] = {}
        # Negatives come from the global batch: with N processes the MI terms see every
        # process's features (gradients flow back to each shard), so they equal the
        # one-process terms on the same global batch. The prior and coordinate terms are
        # per-image means: the trainer's gradient average over processes makes them global.
        y_all = gather(y_global)  # alpha or beta is > 0 (check_config)
        if o.alpha > 0:
            terms["global_mi"] = self.mi(player["global_critic"](y_all, gather(out["conv"])))
        if o.beta > 0:
            terms["local_mi"] = self.mi(player["local_critic"](y_all, gather(out["local"])))
        if o.gamma > 0:
            terms["prior"] = encoder_loss(self.nets["prior_D"], self.prior_input(out["y"]), o.prior.encoder_loss)
        modes = coord_modes(o.coord)
        if modes:
            terms["coord"] = sum(coordinate_loss(player[f"coord_{mode}"], y_global, out["local"]) for mode in modes)
        return terms

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        o = self.opts
        if phase == "prior":
            enc = self.encoder
            with torch.no_grad(), frozen_bn_stats(enc):  # the encoder phase updates them, once
                y = enc(batch.x)["y"]
            return self.prior_discriminator_loss(self.prior_input(y))
        if phase != "encoder":
            raise ValueError(f"dim has phases prior and encoder, got '{phase}'")
        terms = self.encoder_terms(batch.x)  # with a prior: the prior phase's batch (declared "previous")
        zero = batch.x.new_zeros(())
        loss = (-(o.alpha * terms.get("global_mi", zero) + o.beta * terms.get("local_mi", zero))
                + o.gamma * terms.get("prior", zero) + o.coord_weight * terms.get("coord", zero))
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
