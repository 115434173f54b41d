"""Datasets by name: real loaders of the real on-disk formats, images as float [-1, 1].

One module per family of formats, each registering its builders in `DATASETS`:
cifar (cifar10, cifar100), stl10, celeba, lsun, folders (tinyimagenet, imagefolder),
synthetic (digits, shapes). `base` holds the dataset classes and pixel conversions,
`registry` the options and `build_dataset`, `loader` the DataLoader options and cache keys;
`walk` lists image folders (links followed, loops ended, each file once), `pickles` reads
CIFAR's pickles without running code, `lmdb_keys` keeps LSUN's key lists.

No network unless `data.download: true` (only cifar10, cifar100 and stl10 can be
downloaded: torchvision fetches and checks the archive). A missing root fails with the
path and what the loader expected there; a malformed file with its name (and line).
"""
from . import celeba, cifar, folders, lsun, stl10, synthetic  # each registers its datasets
from .base import (DecodedDataset, FileDataset, ImageDataset, InMemoryDataset, pil_to_uint8, resize_uint8, to_float,
                   to_uint8)
from .walk import IMAGE_EXTENSIONS
from .loader import NamedErrors, dataset_signature, make_loader_kwargs
from .lsun import LSUN_CATEGORIES, LSUNDataset
from .registry import DATASETS, DOWNLOADABLE, SPLITS, DataConfig, build_dataset, check_config
from .stl10 import STL10Dataset
from .synthetic import SHAPE_KINDS, make_shapes

__all__ = [
    "DATASETS", "DOWNLOADABLE", "IMAGE_EXTENSIONS", "LSUN_CATEGORIES", "SHAPE_KINDS", "SPLITS",
    "DataConfig", "DecodedDataset", "FileDataset", "ImageDataset", "InMemoryDataset", "LSUNDataset",
    "NamedErrors", "STL10Dataset", "build_dataset", "check_config", "dataset_signature", "make_loader_kwargs",
    "make_shapes", "pil_to_uint8", "resize_uint8", "to_float", "to_uint8",
]
