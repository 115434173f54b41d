"""Random input occlusion for the global vector (paper sec. 4.3, App. A.6).

The objective computes Y from x * mask and the local map from the full x, so the global
vector must carry information shared with patches it never saw.

Sampling (A.6 calls its own distribution "ad-hoc"; the constraint is what matters):
the image is cut into a grid of block x block cells anchored at the top-left corner
(cells on the right / bottom edge are cropped when block does not divide the
resolution). Each cell is kept (visible, 1) independently with probability KEEP_PROB (1/2),
else occluded (0). Then two distinct *whole* cells are drawn uniformly and one is forced
visible, the other forced occluded, so every mask has at least one fully visible and at
least one fully occluded block x block region (A.6's constraint). This needs at least two
whole cells: resolution >= 2 * block (e.g. block 10 needs 20x20 images; use a smaller
block, such as 4, for 16x16 demos).
"""
from __future__ import annotations

import torch

from arena.registry import ConfigError


def check_block(block: int, resolution: int) -> None:
    """A mask needs two whole block x block cells: one kept visible, one occluded."""
    if block < 1 or (resolution // block) ** 2 < 2:
        raise ConfigError(
            f"objective.occlusion_block: {block} leaves fewer than two whole {block}x{block} cells in a "
            f"{resolution}x{resolution} image (data.resolution={resolution}): one must stay visible, "
            f"one occluded; use a block <= {max(1, resolution // 2)}"
        )


KEEP_PROB = 0.5  # each cell is visible with this probability (then one forced visible, one occluded)


def occlusion_mask(batch: int, resolution: int, block: int = 10, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """A {0, 1} float mask [batch, 1, resolution, resolution]; multiply it into the image."""
    check_block(block, resolution)
    whole = resolution // block  # whole cells per side
    cells = -(-resolution // block)  # ceil: cells per side, edge cells may be cropped
    # Seeded: built on the generator's device; in training on the target device (no copy).
    dev = generator.device if generator is not None else device
    keep = (torch.rand(batch, cells, cells, generator=generator, device=dev) < KEEP_PROB).float()

    # Two distinct whole cells per image: v uniform, o = v + uniform offset in 1..F-1 (mod F).
    n_whole = whole * whole
    v = torch.randint(0, n_whole, (batch,), generator=generator, device=dev)
    o = (v + torch.randint(1, n_whole, (batch,), generator=generator, device=dev)) % n_whole
    b = torch.arange(batch, device=dev)
    keep[b, v // whole, v % whole] = 1.0
    keep[b, o // whole, o % whole] = 0.0

    mask = keep.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    mask = mask[:, :resolution, :resolution].unsqueeze(1)
    return mask.to(device) if device is not None else mask
