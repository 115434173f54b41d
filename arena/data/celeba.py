"""Aligned CelebA: jpgs, the partition list and 40 binary attributes."""
from __future__ import annotations

import torch

from arena.registry import ConfigError

from .base import FileDataset, ImageDataset
from .registry import DATASETS, DataConfig, augment_flag, require, root_of


# Aligned CelebA images are 178x218 with the face centered; a 140x140 center crop
# keeps the face and hair and drops most background (the crop commonly used for
# 64x64 GAN training), and is then resized to the resolution.
CELEBA_CROP = 140


@DATASETS.register("celeba")
def _celeba(cfg: DataConfig, split: str) -> ImageDataset:
    """Aligned CelebA; train = partition 0, test = partition 2; 40 attributes as 0/1."""
    folder = require(root_of(cfg) / "celeba", "the aligned CelebA folder (img_align_celeba/, "
                      "list_eval_partition.txt, list_attr_celeba.txt) there")
    images_dir = require(folder / "img_align_celeba", "the aligned CelebA jpgs (000001.jpg, ...) there")
    partition_file = require(folder / "list_eval_partition.txt",
                              "CelebA's partition list ('<file> <0|1|2>' per line) there")
    attr_file = require(folder / "list_attr_celeba.txt",
                         "CelebA's attribute list (a count line, 40 attribute names, then '<file> <40 x -1|1>') there")
    wanted = "0" if split == "train" else "2"  # 0 train, 1 validation (unused), 2 test
    names = sorted(line.split()[0] for line in partition_file.read_text().splitlines()
                   if len(line.split()) == 2 and line.split()[1] == wanted)
    lines = attr_file.read_text().splitlines()
    attributes = lines[1].split()
    values = {}
    for line in lines[2:]:
        parts = line.split()
        if parts:
            values[parts[0]] = [int(v) == 1 for v in parts[1:]]
    missing = [n for n in names if n not in values]
    if missing or len(attributes) != 40:
        raise ConfigError(f"data.root: {attr_file} does not list 40 attributes for every image "
                          f"({len(attributes)} names; {len(missing)} files missing, e.g. {missing[:1]})")
    if not names:
        raise ConfigError(f"data.root: {partition_file} lists no images for partition {wanted} ({split})")
    labels = torch.tensor([values[n] for n in names], dtype=torch.long)
    return FileDataset("celeba", split, [images_dir / n for n in names], labels, resolution=cfg.resolution,
                       num_classes=len(attributes), multilabel=True, class_names=attributes, crop=CELEBA_CROP,
                       augment=augment_flag(cfg, split), skip_bad_files=cfg.skip_bad_files)
