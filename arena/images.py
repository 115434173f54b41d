"""Image grids on disk, shared by the trainer's sample hook and eval.sample_grid."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torchvision.utils import save_image


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Write images (float in [-1, 1] or uint8, [N, C, H, W]) as one PNG grid, atomically
    (temp file in the same folder + os.replace), so a reader never sees half a file."""
    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) / 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(fd)
    try:
        save_image(x, tmp, nrow=nrow, padding=2, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a grid is for everyone to look at
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
