"""Aligned CelebA: jpgs, the partition list and 40 binary attributes."""
from __future__ import annotations

from pathlib import Path

import torch

from arena.registry import ConfigError

from .base import FileDataset, ImageDataset
from .registry import DATASETS, DataConfig, augment_flag, read_text, require, root_of


# Aligned CelebA images are 178x218 with the face centered; a 140x140 center crop
# keeps the face and hair and drops most background (the crop commonly used for
# 64x64 GAN training), and is then resized to the resolution.
CELEBA_CROP = 140


@DATASETS.register("celeba")
def _celeba(cfg: DataConfig, split: str) -> ImageDataset:
    """Aligned CelebA; train = partition 0, test = partition 2; 40 attributes as 0/1."""
    folder = require(root_of(cfg) / "celeba", "the aligned CelebA folder (img_align_celeba/, "
                     "list_eval_partition.txt, list_attr_celeba.txt) there", kind="dir")
    images_dir = require(folder / "img_align_celeba", "the aligned CelebA jpgs (000001.jpg, ...) there", kind="dir")
    partition_file = require(folder / "list_eval_partition.txt",
                             "CelebA's partition list ('<file> <0|1|2>' per line) there", kind="file")
    attr_file = require(folder / "list_attr_celeba.txt", f"CelebA's attribute list ({ATTR_LAYOUT}) there",
                        kind="file")
    wanted = "0" if split == "train" else "2"  # 0 train, 1 validation (unused), 2 test
    names = sorted(n for n, p in _read_partitions(partition_file).items() if p == wanted)
    if not names:
        raise ConfigError(f"data.root: {partition_file} lists no images for partition {wanted} ({split})")
    attributes, values = _read_attributes(attr_file)
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"data.root: {attr_file} lists no attributes for {len(missing)} of the {split} images "
                          f"of {partition_file.name}, e.g. {missing[0]}")
    labels = torch.tensor([values[n] for n in names], dtype=torch.long)
    return FileDataset("celeba", split, [images_dir / n for n in names], labels, resolution=cfg.resolution,
                       num_classes=len(attributes), multilabel=True, class_names=attributes, crop=CELEBA_CROP,
                       augment=augment_flag(cfg, split), skip_bad_files=cfg.skip_bad_files)


ATTR_LAYOUT = "a count line, 40 attribute names, then '<file> <40 x -1|1>' per image"


def _read_partitions(path: Path) -> dict[str, str]:
    """list_eval_partition.txt: '<file> <0|1|2>' per line -> {file: partition}; every line checked."""
    partitions: dict[str, str] = {}
    for number, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or parts[0] in partitions:
            problem = "repeats an image" if len(parts) == 2 and parts[0] in partitions else "is not '<file> <0|1|2>'"
            raise ConfigError(f"data.root: {path} line {number} {problem}: {line[:80]!r}")
        partitions[parts[0]] = parts[1]
    return partitions


def _read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """list_attr_celeba.txt -> (the 40 names, {file: 40 values 0/1}), each -1 read as 0 and 1 as 1.
    The count on the first line must match the rows: a shorter file was cut off."""
    lines = read_text(path).splitlines()
    attributes = lines[1].split() if len(lines) > 1 else []
    if len(attributes) != 40 or not lines[0].strip().isdigit():
        raise ConfigError(f"data.root: {path} does not begin with a count line and 40 attribute names "
                          f"({len(attributes)} names); expected {ATTR_LAYOUT}")
    values: dict[str, list[int]] = {}
    for number, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 41 or any(v not in ("-1", "1") for v in parts[1:]) or parts[0] in values:
            problem = "repeats an image" if parts[0] in values else "is not a file name and 40 values -1 or 1"
            raise ConfigError(f"data.root: {path} line {number} {problem}: {line[:120]!r}")
        values[parts[0]] = [int(v == "1") for v in parts[1:]]
    if len(values) != int(lines[0]):
        raise ConfigError(f"data.root: {path} lists {len(values)} images but its first line says {int(lines[0])}; "
                          f"the file may be truncated: replace it with the original download")
    return attributes, values
