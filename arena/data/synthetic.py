"""Datasets that need no files: scikit-learn's digits and procedural shapes."""
from __future__ import annotations

import numpy as np
import torch

from arena.seeds import derive_seed

from .base import ImageDataset, InMemoryDataset, resize_uint8
from .registry import DATASETS, DataConfig, no_augment


@DATASETS.register("digits")
def _digits(cfg: DataConfig, split: str) -> ImageDataset:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16), 1 channel, stratified seeded split."""
    no_augment(cfg)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8))[:, None]  # 0..16 -> 0..255
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=cfg.test_fraction,
                                           random_state=cfg.split_seed, stratify=digits.target)
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return InMemoryDataset("digits", split, resize_uint8(images[idx], cfg.resolution), labels[idx], 10,
                           [str(k) for k in range(10)])


SHAPE_KINDS = ("circle", "square", "triangle", "cross")


def make_shapes(n: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n coloured shapes on dark backgrounds: uint8 [n, 3, R, R] and kind labels [n].

    Image k's parameters are row k of one uniform draw, so the first n images of a seed
    are the same for any larger n and for any chunking.
    """
    u = torch.rand(n, 8, generator=torch.Generator().manual_seed(seed))
    kind = (u[:, 0] * len(SHAPE_KINDS)).long().clamp(max=len(SHAPE_KINDS) - 1)
    r = 0.12 + 0.18 * u[:, 1]  # half-size, as a fraction of the side
    cx = r + (1 - 2 * r) * u[:, 2]  # keeps the shape inside the image
    cy = r + (1 - 2 * r) * u[:, 3]
    colour = 0.35 + 0.65 * u[:, 4:7]  # bright foreground
    background = 0.15 * u[:, 7:8]  # dark grey
    coords = (torch.arange(resolution) + 0.5) / resolution  # pixel centers in [0, 1]
    out = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    step = max(1, 2 ** 20 // resolution ** 2)
    for s in range(0, n, step):
        sl = slice(s, s + step)
        dx = coords[None, None, :] - cx[sl, None, None]  # [b, 1, R]
        dy = coords[None, :, None] - cy[sl, None, None]  # [b, R, 1] (y grows downwards)
        rr = r[sl, None, None]
        ax, ay = dx.abs(), dy.abs()
        masks = torch.stack([
            dx ** 2 + dy ** 2 <= rr ** 2,  # circle
            (ax <= 0.8 * rr) & (ay <= 0.8 * rr),  # square
            (dy <= rr) & (ax <= (dy + rr) / 2),  # triangle: apex at cy - r, base 2r wide at cy + r
            ((ax <= rr) & (ay <= rr / 3)) | ((ay <= rr) & (ax <= rr / 3)),  # cross
        ], 1)  # [b, 4, R, R]
        b = masks.shape[0]
        mask = masks.gather(1, kind[sl, None, None, None].expand(b, 1, resolution, resolution))
        img = torch.where(mask, colour[sl, :, None, None], background[sl, :, None, None])
        out[sl] = (img * 255).round().to(torch.uint8)
    return out, kind


@DATASETS.register("shapes")
def _shapes(cfg: DataConfig, split: str) -> ImageDataset:
    """Procedural shapes, label = kind; train and test use different seeds derived from split_seed."""
    no_augment(cfg)
    n_train = cfg.num_images or 4096
    n = n_train if split == "train" else max(1, n_train // 4)
    images, labels = make_shapes(n, cfg.resolution, seed=derive_seed(cfg.split_seed, "shapes_split", int(split == "test")))
    return InMemoryDataset("shapes", split, images, labels, len(SHAPE_KINDS), list(SHAPE_KINDS))
