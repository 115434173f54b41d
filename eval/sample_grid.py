"""Sample grids of a trained generator.

    python -m eval.sample_grid --run runs/ie_digits --out grid.png
    python -m eval.sample_grid --run runs/ie_digits --interpolate --interp slerp --out interp.png

The latents come from torch.Generator().manual_seed(seed), so a seed gives the same
grid every time (for the same checkpoint, device and --n). With --interpolate each
row walks from one seeded latent to another in nrow steps: linear by default
(`--interp lerp`, stays inside any convex latent set), or spherical (`--interp slerp`,
keeps the norm of Gaussian latents). Images smaller than --cell pixels (64 by default)
are upscaled by nearest neighbour, so a grid of 16 px digits is readable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from arena.images import READABLE_CELL, save_grid
from arena.registry import ConfigError, cli_error
from arena.runs import load_run

from .cli_args import count_arg, default_device, device_arg, seed_arg

MAX_IMAGES = 4096  # one grid is one batch of the generator: 64 x 64 tiles at most


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of flattened latents; a, b [R, D], t [S] -> [R, S, D].

    slerp(a, b; t) = sin((1-t) w) / sin w * a + sin(t w) / sin w * b, w = angle(a, b);
    falls back to lerp where a and b are (anti)parallel (sin w ~ 0).
    """
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1).clamp(-1, 1)[:, None, None]  # [R, 1, 1]
    w = torch.acos(cos)
    s = torch.sin(w)
    t = t[None, :, None]
    lerp = (1 - t) * a[:, None] + t * b[:, None]
    safe = s.abs() > 1e-6
    s = torch.where(safe, s, torch.ones_like(s))
    sl = torch.sin((1 - t) * w) / s * a[:, None] + torch.sin(t * w) / s * b[:, None]
    return torch.where(safe, sl, lerp)


def grid_latents(latent: Callable[[int, torch.Generator], torch.Tensor], n: int, nrow: int, seed: int,
                 interpolate: bool = False, mode: str = "lerp") -> torch.Tensor:
    """n latents from seed; with interpolate, n // nrow rows of nrow steps between seeded endpoints."""
    g = torch.Generator().manual_seed(seed)
    if not interpolate:
        return latent(n, g)
    if mode not in ("lerp", "slerp"):
        raise ConfigError(f"--interp: unknown mode '{mode}'; valid choices: lerp, slerp")
    rows = max(1, n // nrow)
    z = latent(2 * rows, g)
    shape = z.shape[1:]
    a, b = z[:rows].flatten(1).double(), z[rows:].flatten(1).double()
    t = torch.linspace(0, 1, nrow, dtype=torch.float64)
    if mode == "slerp":
        path = slerp(a, b, t)
    else:
        path = (1 - t)[None, :, None] * a[:, None] + t[None, :, None] * b[:, None]
    return path.reshape(rows * nrow, *shape).to(z.dtype)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.sample_grid", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint directory")
    p.add_argument("--n", type=count_arg(1, MAX_IMAGES), default=64, help=f"number of images (at most {MAX_IMAGES})")
    p.add_argument("--nrow", type=count_arg(1, MAX_IMAGES), default=8, help="images per row")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA generator")
    p.add_argument("--interpolate", action="store_true", help="rows interpolate between seeded latents")
    p.add_argument("--interp", choices=("lerp", "slerp"), default="lerp", help="interpolation path")
    p.add_argument("--cell", type=int, default=READABLE_CELL,
                   help="upscale small images (nearest neighbour) to cells of at least this many pixels; 0: as they are")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)
    try:
        if args.cell < 0:
            raise ConfigError(f"--cell must be >= 0 (0 = no upscaling), got {args.cell}")
        if Path(args.out).is_dir():
            raise ConfigError(f"--out: {args.out} is a directory; give the PNG file to write, "
                              f"e.g. {Path(args.out) / 'grid.png'}")
        cfg, objective, step = load_run(args.run, args.checkpoint, args.device)
        if not objective.generates:
            raise ConfigError(f"--run: objective '{cfg.objective.name}' does not generate images")
        z = grid_latents(objective.latent, args.n, args.nrow, args.seed, args.interpolate, args.interp)
        images = objective.generate(z, ema=args.ema)  # one batch: the grid never depends on batching
        try:
            out = save_grid(images, args.out, args.nrow, args.cell)
        except OSError as e:  # unwritable folder, full disk, a file where a folder should be
            raise ConfigError(f"--out: cannot write {args.out}: {e.strerror or e}") from None
    except ConfigError as e:
        return cli_error(e)
    print(f"wrote {out} ({len(images)} images, step {step}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
