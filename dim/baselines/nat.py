"""`nat`: noise as targets (Bojanowski & Joulin 2017), the paper's NAT rows (Tables 1-3).

Every training image i holds one of N fixed targets c_k, drawn from N(0, I_y_dim) and
L2-normalized; the encoder's output u = Y / ||Y|| is pulled to its image's target:

    loss = E_batch || u_i - c_target(i) ||^2  (= 2 - 2 cos(u_i, c_target(i)); cortex's -cos, up to 2x)

Every `reassign_every`-th epoch, on every batch, the targets the batch's images hold are
re-dealt among them by the Hungarian algorithm (scipy's linear_sum_assignment) to maximize
the total similarity sum_i u_i . c_target(i), then the step trains on the new targets; the
assignment stays a permutation of the N targets. Source: facebookresearch/noise-as-targets
main.lua (random initial assignment, re-assignment every 3rd epoch, squared distance). Only
training images have targets (cortex's arch/nat.py also assigned them to test images).
The model section is an encoder objective's; model.y_dim is the size of Y and of the targets
(main.lua: 2048-d codes; 64 keeps Y the DIM rows' size).

State: the targets are a function of the run seed (rebuilt, never stored or broadcast); the
assignment is an integer buffer of the encoder player, saved in every checkpoint and never
averaged or broadcast by the trainer (it syncs floating buffers only). With N processes the
re-assignment runs on the gathered global batch, identically on every process. The
Hungarian algorithm runs on the CPU: in a re-assignment epoch each step waits for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from arena.distributed import gather
from arena.objective import OBJECTIVES, Batch, DataInfo, ObjectiveOptions, Phase
from arena.registry import ConfigError
from arena.schema import Range
from arena.seeds import derive_seed

from ..objective import EncoderModel, EncoderObjective


@dataclass
class NATOptions(ObjectiveOptions):
    name: str = "nat"
    # epochs: re-assign on every batch of every k-th epoch (main.lua: 3)
    reassign_every: Annotated[int, Range(1, note="epochs")] = 3


class Assignment(nn.Module):
    """target_of[i]: the index of image i's target (a permutation of 0..N-1)."""

    def __init__(self, target_of: Tensor):
        super().__init__()
        self.register_buffer("target_of", target_of)


def nat_targets(n: int, dim: int, seed: int) -> Tensor:
    """N L2-normalized N(0, I) targets [n, dim], a function of the seed (CPU)."""
    g = torch.Generator().manual_seed(derive_seed(seed, "nat", 0))
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


def initial_assignment(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "nat", 1))
    return torch.randperm(n, generator=g)


@OBJECTIVES.register("nat")
class NAT(EncoderObjective):
    Model = EncoderModel
    Options = NATOptions

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        n, seed = info.num_images, cfg.run.seed
        if n < 1:
            raise ConfigError(f"objective.name: nat needs the number of training images of {cfg.data.name} "
                              f"(one target per image); the data description has none")
        self.nets["encoder"] = self.encoder_player(info, assignment=Assignment(initial_assignment(n, seed)))
        self._targets = nat_targets(n, cfg.model.y_dim, seed)

    def phases(self) -> list[Phase]:
        return [Phase("encoder", ("encoder",))]

    @property
    def target_of(self) -> Tensor:
        return self.nets["encoder"]["assignment"].target_of

    def targets(self) -> Tensor:
        """The fixed targets on the training device (moved there once)."""
        if self._targets.device != self.device:
            self._targets = self._targets.to(self.device)
        return self._targets

    def reassigning(self, epoch: int) -> bool:
        """Every k-th epoch counting from 1 (epochs k-1, 2k-1, ... from 0)."""
        return (epoch + 1) % self.opts.reassign_every == 0

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        if batch.index is None:
            raise ValueError("nat needs each image's training-set index in the batch (Batch.index)")
        u = F.normalize(self.encoder(batch.x)["y"].float(), dim=1)
        out = {}
        if self.reassigning(batch.epoch):
            out["reassigned"] = self.reassign(u.detach(), batch.index)
        t = self.targets()[self.target_of[batch.index]]
        loss = (u - t).pow(2).sum(1).mean()
        return {"loss": loss, "cosine": (u.detach() * t).sum(1).mean(), **out}

    @torch.no_grad()
    def reassign(self, u: Tensor, index: Tensor) -> Tensor:
        """Re-deal the targets held by the global batch's images to maximize the summed
        similarity u_i . c_k (Hungarian). -> the fraction of images whose target changed."""
        u_all, idx_all = gather(u), gather(index)
        held = self.target_of[idx_all]
        similarity = u_all @ self.targets()[held].T  # [B, B]: image i, held target j
        rows, cols = linear_sum_assignment(similarity.cpu().double().numpy(), maximize=True)
        new = held[torch.as_tensor(cols, device=held.device)]
        self.target_of[idx_all[torch.as_tensor(rows, device=held.device)]] = new
        return (new != held).float().mean()
