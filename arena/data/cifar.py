"""CIFAR-10 and CIFAR-100 from their python pickles, held in memory."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import ImageDataset, InMemoryDataset, resize_uint8
from .registry import DATASETS, DataConfig, no_augment, require, root_of


def _read_cifar(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Python-pickled dicts; "data" is uint8 [N, 3072]: 1024 red, 1024 green, 1024 blue
    # values, each a row-major 32x32 plane. The files were pickled by Python 2, hence latin1.
    data, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry[label_key])
    images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))
    return images, torch.tensor(labels, dtype=torch.long)


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
    if cfg.download:
        # torchvision downloads, checks the archive's md5 and extracts; we read the
        # pickles ourselves (its loader also md5-checks every file, which a re-saved copy fails).
        from torchvision.datasets import CIFAR10, CIFAR100
        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=split == "train", download=True)
    path = require(root / folder, f"{what} there", downloadable=True)
    for f in files:
        require(path / f, f"{what} in {path}", downloadable=True)
    images, labels = _read_cifar(path, files, label_key)
    class_names = []
    if (path / meta).is_file():
        with open(path / meta, "rb") as f:
            class_names = list(pickle.load(f, encoding="latin1")[names_key])
    return InMemoryDataset(name, split, resize_uint8(images, cfg.resolution), labels, num_classes, class_names)


@DATASETS.register("cifar10")
def _cifar10(cfg: DataConfig, split: str) -> ImageDataset:
    return _cifar(cfg, split, "cifar10")


@DATASETS.register("cifar100")
def _cifar100(cfg: DataConfig, split: str) -> ImageDataset:
    return _cifar(cfg, split, "cifar100")
