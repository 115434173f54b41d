"""STL-10's binary files, memory-mapped, with the paper's 64x64 crops."""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch

from arena.registry import ConfigError

from .base import ImageDataset, resize_uint8, to_float
from .registry import DATASETS, DataConfig, augment_flag, download, read_bytes, read_text, require, root_of


# Labels are 1-based uint8, one byte per image.
STL_SIDE = 96
STL_CROP = 64  # the paper's random 64x64 crops of the 96x96 images (section 4.1)


class STL10Dataset(ImageDataset):
    """STL-10 read through np.memmap (100k unlabeled images are 2.7 GB; only touched pages load).

    Each item is a 64x64 crop of the 96x96 image (random + random horizontal flip when
    augmenting, else the center crop), resized to the resolution when it differs.
    """

    def __init__(self, split: str, parts: list[Path], labels: torch.Tensor, resolution: int, augment: bool):
        super().__init__("stl10", split, labels, 3, resolution, 10, class_names=_stl_class_names(parts[0].parent))
        self.parts = parts
        counts = [p.stat().st_size // (3 * STL_SIDE * STL_SIDE) for p in parts]
        self.starts = np.cumsum([0] + counts[:-1]).tolist()
        self.augment = augment
        self._maps: list[np.ndarray] | None = None

    def _images(self) -> list[np.ndarray]:
        if self._maps is None:  # opened lazily so pickling to worker processes sends paths, not 2.7 GB
            self._maps = [np.memmap(p, dtype=np.uint8, mode="r").reshape(-1, 3, STL_SIDE, STL_SIDE)
                          for p in self.parts]
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        part = bisect.bisect_right(self.starts, i) - 1
        img = torch.from_numpy(np.array(self._images()[part][i - self.starts[part]])).transpose(1, 2)
        if self.augment:
            top, left = torch.randint(0, STL_SIDE - STL_CROP + 1, (2,)).tolist()
        else:
            top = left = (STL_SIDE - STL_CROP) // 2
        x = img[:, top:top + STL_CROP, left:left + STL_CROP]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        x = resize_uint8(x[None], self.resolution)[0]
        return to_float(x), self.labels[i]


def _stl_class_names(folder: Path) -> list[str]:
    """class_names.txt (optional): STL-10's 10 class names, one a line."""
    path = folder / "class_names.txt"
    names = read_text(path).split() if path.is_file() else []
    if names and len(names) != 10:
        raise ConfigError(f"data.root: {path} lists {len(names)} class names; STL-10 has 10, one a line")
    return names


@DATASETS.register("stl10")
def _stl10(cfg: DataConfig, split: str) -> ImageDataset:
    """train = 5k labeled train + 100k unlabeled (label -1), or the 5k alone with
    data.labeled_only; test = 8k labeled test."""
    root = root_of(cfg)
    names = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")
    if cfg.download and not all((root / "stl10_binary" / f).is_file() for f in names):
        from torchvision.datasets import STL10
        download("stl10", root, STL10)  # checks the archive's md5, unpacks
    what = "STL-10's binary files (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)"
    folder = require(root / "stl10_binary", f"{what} there", downloadable=True, kind="dir")
    pairs = [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)] if split == "train" \
        else [("test_X.bin", "test_y.bin")]
    if cfg.labeled_only:
        pairs = pairs[:1]
    parts, labels = [], []
    for images_file, labels_file in pairs:
        path = require(folder / images_file, f"{what} in {folder}", downloadable=True, kind="file")
        size = path.stat().st_size
        if size % (3 * STL_SIDE * STL_SIDE) or not size:
            raise ConfigError(f"data.root: {path} has {size} bytes, not a positive multiple of one 3x96x96 image "
                              f"({3 * STL_SIDE * STL_SIDE} bytes); the file may be truncated")
        n = size // (3 * STL_SIDE * STL_SIDE)
        if labels_file is None:
            y = torch.full((n,), -1, dtype=torch.long)
        else:
            labels_path = require(folder / labels_file, f"{what} in {folder}", True, kind="file")
            y = torch.from_numpy(np.frombuffer(read_bytes(labels_path), np.uint8).astype(np.int64)) - 1  # 1-based
            if len(y) != n:
                raise ConfigError(f"data.root: {labels_path} has {len(y)} labels for {n} images")
            if ((y < 0) | (y > 9)).any():
                raise ConfigError(f"data.root: {labels_path} has labels outside 1..10 (STL-10's classes, 1-based)")
        parts.append(path)
        labels.append(y)
    return STL10Dataset(split, parts, torch.cat(labels), cfg.resolution, augment_flag(cfg, split, default=True))
