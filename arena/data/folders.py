"""Folders of image files: Tiny ImageNet's layout and generic class subfolders."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from arena.registry import ConfigError

from .base import FileDataset, ImageDataset
from .registry import DATASETS, DataConfig, augment_flag, require, root_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@DATASETS.register("tinyimagenet")
def _tinyimagenet(cfg: DataConfig, split: str) -> ImageDataset:
    """Tiny ImageNet (64x64, 200 classes); train = train/, test = val/ (the test/ split has no labels)."""
    root = root_of(cfg)
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    layout = "Tiny ImageNet (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"
    require(base, f"{layout} there")
    wnids = sorted(require(base / "wnids.txt", f"{layout} in {base}").read_text().split())
    class_to_idx = {w: k for k, w in enumerate(wnids)}
    files, labels = [], []
    if split == "train":
        for w in wnids:
            images = sorted(require(base / "train" / w / "images", f"{layout} in {base}").glob("*.JPEG"))
            files += images
            labels += [class_to_idx[w]] * len(images)
    else:
        # val_annotations.txt: tab-separated filename, wnid, bounding box x0 y0 x1 y1
        annotations = require(base / "val" / "val_annotations.txt", f"{layout} in {base}")
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            filename, wnid = line.split("\t")[:2]
            if wnid not in class_to_idx:
                raise ConfigError(f"data.root: {annotations} names class {wnid!r}, which is not in wnids.txt")
            files.append(base / "val" / "images" / filename)
            labels.append(class_to_idx[wnid])
    if not files:
        raise ConfigError(f"data.root: no {split} images found in {base}; expected {layout}")
    return FileDataset("tinyimagenet", split, files, torch.tensor(labels), resolution=cfg.resolution,
                       num_classes=len(wnids), class_names=wnids, augment=augment_flag(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)


def _has_images(folder: Path) -> bool:
    """Whether `folder` holds an image file anywhere below it (stops at the first)."""
    for _, _, filenames in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
            return True
    return False


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageDataset:
    """root/train/<class>/** and root/test/<class>/**; classes are train's sorted subfolders."""
    root = root_of(cfg)
    layout = "an image folder: train/<class>/<images> and test/<class>/<images>"
    train_dir = require(root / "train", f"{layout} under {root}")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"data.root: {train_dir} has no class subfolders; expected {layout}")
    # Every subfolder of train/ is a class: one without images would be a class no image has
    # (a classifier output never trained); an error, not a silent extra class.
    empty = [c for c in classes if not _has_images(train_dir / c)]
    if empty:
        raise ConfigError(f"data.root: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}) in {train_dir}: "
                          f"{', '.join(empty)}; every subfolder of train/ is a class: add its images or remove it")
    class_to_idx = {c: k for k, c in enumerate(classes)}
    split_dir = require(root / split, f"{layout} under {root}")
    unknown = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in class_to_idx)
    if unknown:
        raise ConfigError(f"data.root: {split_dir} has classes not in {train_dir}: {', '.join(unknown)}")
    files, labels = [], []
    for c in classes:
        for dirpath, _, filenames in sorted(os.walk(split_dir / c, followlinks=True)):
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath) / f)
                    labels.append(class_to_idx[c])
    if not files:
        raise ConfigError(f"data.root: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {split_dir}")
    return FileDataset("imagefolder", split, files, torch.tensor(labels), resolution=cfg.resolution,
                       num_classes=len(classes), class_names=classes, augment=augment_flag(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)
