"""Coordinate prediction auxiliary tasks (paper sec. 4.3, App. A.6).

absolute: maximize E[log p((i, j) | y, c_(i,j))]: from the global vector y and the local
          feature at (i, j), predict the row i (h classes) and column j (w classes).
relative: maximize E[log p((i - i', j - j') | y, c_(i,j), c_(i',j'))]: from y, a source
          feature and a target feature, predict the row offset (2h - 1 classes,
          i - i' in -(h-1)..h-1) and column offset (2w - 1 classes).

The two coordinates are independent categoricals, so the loss is the *sum* of the two
cross-entropies (A.6), averaged over the sampled (image, location) rows; at chance it is
log(h) + log(w) (absolute) or log(2h-1) + log(2w-1) (relative). p_theta is an MLP with
two hidden layers of 512 units, batch norm and ReLU (A.6), and one linear head per axis.
Gradients reach the encoder through y and the local features; the objective decides
the weight.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from arena.registry import ConfigError

from .encoders import scaled

MODES = ("absolute", "relative")
Coord = Literal["none", "absolute", "relative", "both"]  # objective.coord (sec. 4.3, A.6)
# objective.coord -> the predictors it trains
COORD_OPTIONS: dict[str, tuple[str, ...]] = {"none": (), "absolute": ("absolute",), "relative": ("relative",), "both": MODES}


def coord_modes(option: Coord) -> tuple[str, ...]:
    """The coordinate modes trained for objective.coord = `option`."""
    return COORD_OPTIONS[option]


class CoordinatePredictor(nn.Module):
    """forward(y, c) (absolute) or forward(y, c_src, c_tgt) (relative) -> (row logits, col logits)."""

    def __init__(self, global_dim: int, local_channels: int, grid: tuple[int, int], mode: str = "absolute",
                 hidden: int = 512, width: float = 1.0):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"coordinate mode: unknown '{mode}'; valid choices: {', '.join(MODES)}")
        self.mode = mode
        self.grid = (int(grid[0]), int(grid[1]))
        h, w = self.grid
        n_local = 1 if mode == "absolute" else 2
        u = scaled(hidden, width)
        self.body = nn.Sequential(
            nn.Linear(global_dim + n_local * local_channels, u, bias=False), nn.BatchNorm1d(u), nn.ReLU(inplace=True),
            nn.Linear(u, u, bias=False), nn.BatchNorm1d(u), nn.ReLU(inplace=True),
        )
        self.n_classes = (h, w) if mode == "absolute" else (2 * h - 1, 2 * w - 1)
        self.head_row = nn.Linear(u, self.n_classes[0])
        self.head_col = nn.Linear(u, self.n_classes[1])

    def forward(self, y: torch.Tensor, *local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.body(torch.cat([y, *local], dim=1))
        return self.head_row(z), self.head_col(z)


def coordinate_loss(predictor: CoordinatePredictor, y: torch.Tensor, local: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean (over rows) of CE(row) + CE(col) for a batch: y [N, D], local map [N, C, h, w].

    absolute: every location of every image (A.6: "we marginalize this objective over all
      local features associated with a given global feature"), which is the exact
      expectation over a uniformly sampled location.
    relative: per image one source location is sampled uniformly from `generator`, and the
      targets are all h*w locations (A.6: one source, marginalized over all targets).
    """
    n, c, h, w = local.shape
    if (h, w) != predictor.grid:
        raise ValueError(f"predictor built for a {predictor.grid} grid, local map is {(h, w)}")
    feats = rearrange(local, "n c h w -> n (h w) c")  # l = row * w + col
    dev = local.device
    if predictor.mode == "absolute":
        loc = torch.arange(h * w, device=dev).expand(n, -1)  # [N, L]
        k = loc.shape[1]
        c_sel = torch.gather(feats, 1, loc.unsqueeze(-1).expand(-1, -1, c)).reshape(n * k, c)
        y_rep = y.unsqueeze(1).expand(-1, k, -1).reshape(n * k, -1)
        row_logits, col_logits = predictor(y_rep, c_sel)
        loc = loc.reshape(-1)
        row_t, col_t = loc // w, loc % w
    else:
        src = torch.randint(0, h * w, (n,), generator=generator,
                            device=generator.device if generator is not None else dev).to(dev)  # [N]
        k = h * w
        c_src = feats[torch.arange(n, device=dev), src]  # [N, C]
        c_src = c_src.unsqueeze(1).expand(-1, k, -1).reshape(n * k, c)
        c_tgt = feats.reshape(n * k, c)
        y_rep = y.unsqueeze(1).expand(-1, k, -1).reshape(n * k, -1)
        row_logits, col_logits = predictor(y_rep, c_src, c_tgt)
        tgt = torch.arange(k, device=dev)
        # offset (i - i') shifted by h - 1 into 0..2h-2
        row_t = (src[:, None] // w - tgt[None] // w + (h - 1)).reshape(-1)
        col_t = (src[:, None] % w - tgt[None] % w + (w - 1)).reshape(-1)
    return F.cross_entropy(row_logits, row_t) + F.cross_entropy(col_logits, col_t)
