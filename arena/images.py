"""Image grids on disk, shared by the trainer's sample hook and eval.sample_grid."""
from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torchvision.utils import save_image

# Grid cells are at least this many pixels wide: a 16 px digit is drawn 4x (64 px), a
# 32 px sample 2x, 64 px images as they are. 0 turns upscaling off.
READABLE_CELL = 64


def upscale(x: torch.Tensor, cell: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, kH, kW] by nearest neighbour, k = ceil(cell / max(H, W)) (1 when
    cell <= the image size): every pixel becomes a k x k block of its own value, so no colour
    is invented, and a cell is at least `cell` pixels wide."""
    k = max(1, math.ceil(cell / max(x.shape[-2:]))) if cell > 0 else 1
    return x if k == 1 else x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, cell: int = READABLE_CELL) -> Path:
    """Write images (float in [-1, 1] or uint8, [N, C, H, W]) as one PNG grid, each image
    upscaled to cells of at least `cell` pixels (see `upscale`), atomically (temp file in
    the same folder + os.replace), so a reader never sees half a file."""
    if cell < 0:
        raise ValueError(f"cell must be >= 0 (0 = no upscaling), got {cell}")
    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) / 2
    x = upscale(x, cell)
    with atomic_file(path) as tmp:
        save_image(x, tmp, nrow=nrow, padding=2, format="png")
    return Path(path)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path` to write; on success it replaces `path` in one
    os.replace, on any error it is removed: a reader sees the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
