"""CIFAR-10 and CIFAR-100 from their python pickles, held in memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from arena.registry import ConfigError

from .base import ImageDataset, InMemoryDataset, resize_uint8
from .pickles import load_plain_pickle
from .registry import DATASETS, DataConfig, download, no_augment, require, root_of


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One CIFAR batch: a pickled dict whose "data" is uint8 [N, 3072] (1024 red, 1024 green,
    1024 blue values, each a row-major 32x32 plane) and whose `label_key` lists N classes.
    Python 2 wrote the keys as str (read as latin1); a batch re-saved with bytes keys works too."""
    entry = load_plain_pickle(path, "a CIFAR batch")
    if not isinstance(entry, dict):
        raise ConfigError(f"data.root: {path} holds a {type(entry).__name__}, not CIFAR's dict of data and labels")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        raise ConfigError(f"data.root: {path} has no {' or '.join(map(repr, missing))} entry "
                          f"(it has {', '.join(map(repr, entry)) or 'none'})")
    data, labels = entry["data"], entry[label_key]
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
        shown = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ConfigError(f"data.root: {path}: 'data' is {shown}; CIFAR's is uint8 [N, 3072] (3 x 32 x 32 per row)")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ConfigError(f"data.root: {path}: 'data' has values outside 0..255")
    labels = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
    if labels is None or labels.dtype.kind not in "ui" or labels.shape != (len(data),):
        raise ConfigError(f"data.root: {path}: {label_key!r} must list one integer class per image ({len(data)})")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"data.root: {path}: {label_key!r} has classes outside 0..{num_classes - 1}")
    return data.astype(np.uint8), labels.tolist()


def _read_cifar(folder: Path, files: list[str], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = [], []
    for name in files:
        x, y = _read_batch(folder / name, label_key, num_classes)
        data.append(x)
        labels.extend(y)
    images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))
    return images, torch.tensor(labels, dtype=torch.long)


def _read_class_names(path: Path, names_key: str, num_classes: int) -> list[str]:
    meta = load_plain_pickle(path, "a CIFAR meta file")
    names = meta.get(names_key, meta.get(names_key.encode())) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"data.root: {path} does not list {num_classes} class names under {names_key!r}")
    return names


def _cifar(cfg: DataConfig, split: str, name: str) -> ImageDataset:
    no_augment(cfg)
    root = root_of(cfg)
    if name == "cifar10":
        folder, num_classes, label_key, meta, names_key = "cifar-10-batches-py", 10, "labels", "batches.meta", "label_names"
        files = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
        what = "CIFAR-10's python batches (data_batch_1..5, test_batch)"
    else:
        folder, num_classes, label_key, meta, names_key = "cifar-100-python", 100, "fine_labels", "meta", "fine_label_names"
        files = [split]  # files named "train" and "test"
        what = "CIFAR-100's python files (train, test, meta)"
    if cfg.download and not all((root / folder / f).is_file() for f in files):
        from torchvision.datasets import CIFAR10, CIFAR100
        download(name, root, CIFAR10 if name == "cifar10" else CIFAR100)  # checks the archive's md5, unpacks
    path = require(root / folder, f"{what} there", downloadable=True, kind="dir")
    for f in files:
        require(path / f, f"{what} in {path}", downloadable=True, kind="file")
    images, labels = _read_cifar(path, files, label_key, num_classes)
    class_names = _read_class_names(path / meta, names_key, num_classes) if (path / meta).is_file() else []
    return InMemoryDataset(name, split, resize_uint8(images, cfg.resolution), labels, num_classes, class_names)


@DATASETS.register("cifar10")
def _cifar10(cfg: DataConfig, split: str) -> ImageDataset:
    return _cifar(cfg, split, "cifar10")


@DATASETS.register("cifar100")
def _cifar100(cfg: DataConfig, split: str) -> ImageDataset:
    return _cifar(cfg, split, "cifar100")
