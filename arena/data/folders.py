"""Folders of image files: Tiny ImageNet's layout and generic class subfolders.

Folders are listed by `walk.list_images`: symbolic links are followed (also to places
outside data.root; files are only read), every walk ends, and each image counts once.
"""
from __future__ import annotations

from pathlib import Path

import torch

from arena.registry import ConfigError

from .base import FileDataset, ImageDataset
from .registry import DATASETS, DataConfig, augment_flag, read_text, require, root_of, subfolders
from .walk import IMAGE_EXTENSIONS, list_images


@DATASETS.register("tinyimagenet")
def _tinyimagenet(cfg: DataConfig, split: str) -> ImageDataset:
    """Tiny ImageNet (64x64, 200 classes); train = train/, test = val/ (the test/ split has no labels)."""
    root = root_of(cfg)
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    layout = "Tiny ImageNet (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"
    require(base, f"{layout} there", kind="dir")
    wnids_file = require(base / "wnids.txt", f"{layout} in {base}", kind="file")
    wnids = sorted(read_text(wnids_file).split())
    if len(set(wnids)) != len(wnids):
        raise ConfigError(f"data.root: {wnids_file} lists a class more than once")
    class_to_idx = {w: k for k, w in enumerate(wnids)}
    files, labels = [], []
    if split == "train":
        folders = [require(base / "train" / w / "images", f"{layout} in {base}", kind="dir") for w in wnids]
        for k, images in enumerate(list_images(folders, recursive=False, extensions=(".jpeg",))):
            files += images
            labels += [k] * len(images)
    else:
        files, labels = _tiny_val(base, class_to_idx, layout)
    if not files:
        raise ConfigError(f"data.root: no {split} images found in {base}; expected {layout}")
    return FileDataset("tinyimagenet", split, files, torch.tensor(labels), resolution=cfg.resolution,
                       num_classes=len(wnids), class_names=wnids, augment=augment_flag(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)


def _tiny_val(base: Path, class_to_idx: dict[str, int], layout: str) -> tuple[list[Path], list[int]]:
    """val_annotations.txt: tab-separated filename, wnid, bounding box x0 y0 x1 y1; one line per image."""
    annotations = require(base / "val" / "val_annotations.txt", f"{layout} in {base}", kind="file")
    files, labels, seen = [], [], set()
    for number, line in enumerate(read_text(annotations).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or fields[0] in seen:
            problem = "repeats an image" if len(fields) >= 2 and fields[0] else "is not '<file>\\t<wnid>\\t<box>'"
            raise ConfigError(f"data.root: {annotations} line {number} {problem}: {line[:80]!r}")
        filename, wnid = fields[:2]
        if wnid not in class_to_idx:
            raise ConfigError(f"data.root: {annotations} line {number} names class {wnid!r}, which is not in wnids.txt")
        seen.add(filename)
        files.append(base / "val" / "images" / filename)
        labels.append(class_to_idx[wnid])
    return files, labels


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageDataset:
    """root/train/<class>/** and root/test/<class>/**; classes are train's sorted subfolders."""
    root = root_of(cfg)
    layout = "an image folder: train/<class>/<images> and test/<class>/<images>"
    train_dir = require(root / "train", f"{layout} under {root}", kind="dir")
    classes = subfolders(train_dir)
    if not classes:
        raise ConfigError(f"data.root: {train_dir} has no class subfolders; expected {layout}")
    # Every subfolder of train/ is a class: one without images would be a class no image has
    # (a classifier output never trained); an error, not a silent extra class. For the test
    # split one image per class is enough to tell.
    found = list_images([train_dir / c for c in classes], limit=None if split == "train" else 1)
    empty = [c for c, images in zip(classes, found) if not images]
    if empty:
        raise ConfigError(f"data.root: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}) in {train_dir}: "
                          f"{', '.join(empty)}; every subfolder of train/ is a class: add its images or remove it")
    split_dir = require(root / split, f"{layout} under {root}", kind="dir")
    unknown = [c for c in subfolders(split_dir) if c not in classes]
    if unknown:
        raise ConfigError(f"data.root: {split_dir} has classes not in {train_dir}: {', '.join(unknown)}")
    if split != "train":
        found = list_images([split_dir / c for c in classes])  # a class absent from test/ has no images
    files = [f for images in found for f in images]
    labels = [k for k, images in enumerate(found) for _ in images]
    if not files:
        raise ConfigError(f"data.root: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {split_dir}")
    return FileDataset("imagefolder", split, files, torch.tensor(labels), resolution=cfg.resolution,
                       num_classes=len(classes), class_names=classes, augment=augment_flag(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)
