"""The extension point: a method is an Objective.

An objective builds its players (one nn.Module and one optimizer each) from the config
and, for each named phase, returns a dict of scalar losses. It never calls backward
or steps an optimizer; the trainer does. Phases are data: the default schedule comes
from `phases()`, and `train.phases: [[critic, 5], [generator, 1]]` overrides the
repeats (one round of the schedule is one training step). Each phase declares the data
it takes, and the trainer hands it over: a fresh batch, the batch of the last phase
that drew one, or none; every phase is told the per-process batch size.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .registry import ConfigError, Registry, suggest
from .schema import Count

# Filled by @OBJECTIVES.register as the modules that define objectives are imported: the
# core's prior_match below; dim's and implicit_gen's by their packages' __init__, which
# the entry points (train.py, eval, benchmarks) import. Imports flow one way: the core
# never names the packages above it.
OBJECTIVES: Registry = Registry("objective", hint="objectives register when their package is imported: "
                                                  "import dim, implicit_gen")


@dataclass
class ObjectiveOptions:
    """What every objective's `objective:` section holds: an objective's Options dataclass
    extends this (or LazyPenalty) and sets `name` to the name it is registered under."""

    name: str = ""


@dataclass
class LazyPenalty(ObjectiveOptions):
    """The options of an objective with an input-gradient penalty (R1, contractive, WGAN-GP,
    a prior discriminator's). Lazy regularization (Karras et al. 2020): the penalty runs on
    every k-th run of its phase only, with its weight x k, so the average weight is
    unchanged (Objective.penalty_scale); k = 1, every run, is the papers' method."""

    penalty_every: Count = 1


# What a phase takes: a fresh batch of real data, the batch the last data-drawing phase
# of the step drew (e.g. DIM's encoder phase after its prior phase), or none (noise only).
PHASE_DATA = ("fresh", "previous", "none")


@dataclass(frozen=True)
class Phase:
    name: str
    players: tuple[str, ...]  # players whose optimizers step in this phase
    repeats: int = 1
    data: str = "fresh"  # one of PHASE_DATA

    def __post_init__(self):
        if self.data not in PHASE_DATA:
            raise ValueError(f"phase '{self.name}': data must be one of {', '.join(PHASE_DATA)}, got {self.data!r}")


def resolve_schedule(phases: list[Phase], override: list | None, objective: str) -> list[Phase]:
    """An objective's phases with the repeats of `train.phases` (None: the defaults), checked:
    every phase named at least once, and data reused only after a phase drew it. A phase
    may be named more than once to interleave: [[discriminators, 1], [encoder, 1]] x 50
    then [generator, 1] alternates T and E 50 times per G step, where
    [[discriminators, 50], [encoder, 50], [generator, 1]] trains E 50 times against a T
    that no longer moves."""
    by_name = {p.name: p for p in phases}
    if override is None:
        return check_data_order(list(by_name.values()))
    out = []
    for name, repeats in override:
        if name not in by_name:
            raise ConfigError(f"train.phases: unknown phase '{name}' for objective '{objective}'; "
                              f"valid phases: {', '.join(by_name)}")
        out.append(Phase(name, by_name[name].players, repeats, by_name[name].data))
    missing = set(by_name) - {p.name for p in out}
    if missing:
        raise ConfigError(f"train.phases: phase(s) {', '.join(sorted(missing))} missing")
    return check_data_order(out)


def check_data_order(schedule: list[Phase]) -> list[Phase]:
    """A phase that reuses the previous batch needs a phase before it in the step that drew one."""
    drawn = None
    for p in schedule:
        if p.data == "previous" and drawn is None:
            raise ConfigError(f"train.phases: '{p.name}' reuses the batch of an earlier phase, but no phase "
                              f"before it draws one; put it after "
                              f"{' or '.join(repr(q.name) for q in schedule if q.data == 'fresh')}")
        if p.data == "fresh":
            drawn = p.name
    return schedule


@dataclass
class DataInfo:
    """What an objective may know about the data without loading it."""

    channels: int
    resolution: int
    num_classes: int = 0
    multilabel: bool = False
    num_images: int = 0  # training images (per-image state, e.g. NAT's targets); 0 = not known


@dataclass
class Batch:
    x: Tensor  # images in [-1, 1], [B, C, H, W]
    y: Tensor  # labels ([B] or [B, K]); -1 where unlabeled
    index: Tensor | None = None  # the images' indices in the training set [B] (the training stream gives them)
    epoch: int = 0  # the training stream's epoch the batch belongs to


class Objective(ABC):
    Model: ClassVar[type]  # dataclass of the `model:` section
    Options: ClassVar[type]  # dataclass of the `objective:` section (has `name`)
    main_player: ClassVar[str]  # whose updates train.steps counts
    generates: ClassVar[bool] = False  # has latent() / generate() for samples and IS/FID
    default_ema: ClassVar[dict[str, float]] = {}

    def __init__(self, cfg, info: DataInfo):
        self.cfg = cfg
        self.opts = cfg.objective
        self.info = info
        self.nets = nn.ModuleDict()  # players, filled by subclasses
        self.ema: dict[str, nn.Module] = {}  # EMA copies, kept by the trainer
        # phase -> how many times the trainer has run it (set from the step on resume);
        # a Python count, so schedules read from it cost no host sync.
        self.calls: dict[str, int] = {}

    # -- declared by subclasses -------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for invalid option combinations (runs before any work)."""

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The default schedule: phases in order, each with the players it updates."""

    @abstractmethod
    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        """{'loss': scalar to minimize, other names: values to log}. `batch` is what the
        phase declared (None for data "none"); `batch_size` is the per-process batch size,
        the number of samples a phase without data draws."""

    def clip_norms(self) -> dict[str, float]:
        """Per-player gradient-clipping defaults from objective options (optim.players overrides)."""
        return {}

    # -- settings resolved against the config: the trainer asks here, nowhere else ----
    def schedule(self) -> list[Phase]:
        """The default phases with repeats overridden by `train.phases`."""
        return resolve_schedule(self.phases(), self.cfg.train.phases, self.opts.name)

    def clip_norm(self, player: str) -> float:
        """Max gradient norm of `player` (0 = no clipping): optim.players.<player>.clip_norm,
        else this objective's default (clip_norms), else optim.clip_norm."""
        over = self.cfg.optim.players.get(player)
        if over is not None and over.clip_norm is not None:
            return over.clip_norm
        return self.clip_norms().get(player, self.cfg.optim.clip_norm)

    def ema_decays(self) -> dict[str, float]:
        """Player -> EMA decay: train.ema, else this objective's default_ema ({} = no EMA)."""
        return dict(self.default_ema) if self.cfg.train.ema is None else dict(self.cfg.train.ema)

    def check_players(self) -> None:
        """Every player the config names exists: the players are known once the nets are
        built, so this one check covers every per-player setting (build_objective runs it)."""
        for key, named in (("train.ema", self.cfg.train.ema or {}), ("optim.players", self.cfg.optim.players)):
            for name in named:
                if name not in self.nets:
                    raise ConfigError(f"{key}.{name}: unknown player '{name}'{suggest(name, self.nets)}; "
                                      f"players of objective '{self.opts.name}': {', '.join(self.nets)}")

    def clip_groups(self, player: str) -> list[nn.Module]:
        """The parts of a player whose gradients are clipped each to the norm on their
        own (default: the whole net as one; the IE clips T_P and T_Q separately)."""
        return [self.nets[player]]

    def data_batches_per_step(self) -> int:
        """Batches of real data one training step draws: budgets in steps hide that
        (the IE draws 2, NS-GAN-CP 1, WGAN-GP 5), so the trainer states it."""
        return sum(p.repeats for p in self.schedule() if p.data == "fresh")

    # -- shared helpers ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.nets.parameters()).device

    def net(self, name: str, ema: bool = False) -> nn.Module:
        return self.ema.get(name, self.nets[name]) if ema else self.nets[name]

    def runs_per_step(self) -> dict[str, int]:
        """Phase name -> its runs in one step (a name may appear more than once in a schedule)."""
        runs: dict[str, int] = {}
        for p in self.schedule():
            runs[p.name] = runs.get(p.name, 0) + p.repeats
        return runs

    def penalty_scale(self, phase: str) -> float:
        """Lazy regularization (Karras et al. 2020): with `objective.penalty_every: k` the
        phase's input-gradient penalty (R1 / contractive / WGAN-GP) is computed on every
        k-th run of the phase only, with its weight x k, so the average weight is unchanged.
        Returns k on those runs and 0.0 on the others (skip the penalty). k = 1 (the
        default, the paper's method): 1.0 on every run."""
        k = self.opts.penalty_every if isinstance(self.opts, LazyPenalty) else 1
        return float(k) if self.calls.get(phase, 0) % k == 0 else 0.0

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise ConfigError(f"objective '{self.opts.name}' does not generate images")

    @torch.no_grad()
    def generate(self, z: Tensor, ema: bool = True) -> Tensor:
        raise ConfigError(f"objective '{self.opts.name}' does not generate images")


def data_info(ds) -> DataInfo:
    """The DataInfo of a dataset (an arena.data.ImageDataset)."""
    return DataInfo(ds.channels, ds.resolution, ds.num_classes, ds.multilabel, len(ds))


def build_objective(cfg, info: DataInfo) -> Objective:
    """The objective `cfg.objective.name`, its nets built for data described by `info`."""
    objective = OBJECTIVES.get(cfg.objective.name, key="objective.name")(cfg, info)
    objective.check_players()
    return objective


from . import prior_match  # noqa: E402,F401  the core's own objective registers itself (it imports this module)
