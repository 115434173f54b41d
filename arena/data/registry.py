"""The dataset registry: `data.*` options, their checks, and `build_dataset`.

Each family of formats registers its builder in `DATASETS` from its own module
(arena.data.cifar, .stl10, ...); `arena/data/__init__.py` imports them all.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from arena.registry import ConfigError, Registry

from .base import ImageDataset

SPLITS = ("train", "test")


@dataclass
class DataConfig:
    name: str = "digits"  # registry name
    root: str = "data"  # dataset folder; unused by digits/shapes
    resolution: int = 32  # images are resized/cropped to resolution x resolution
    download: bool = False  # network only when true (torchvision's download for cifar/stl10)
    categories: list[str] = field(default_factory=lambda: ["bedroom"])  # lsun categories
    augment: bool | None = None  # None = dataset default (stl10: random crop + flip; others none)
    skip_bad_files: bool = False  # unreadable image: skip (counted + warned) instead of failing
    num_workers: int = -1  # DataLoader workers for disk datasets; -1 = auto
    num_images: int = 0  # shapes: images in the train split (0 = 4096; test = a quarter)
    test_fraction: float = 0.2  # digits: fixed seeded stratified train/test split
    split_seed: int = 0
    labeled_only: bool = False  # stl10: train on the 5k labeled images only (supervised runs)


Builder = Callable[[DataConfig, str], ImageDataset]
DATASETS: Registry[Builder] = Registry("dataset")

# Checks of the options only one dataset reads, registered by that dataset's module.
OPTION_CHECKS: dict[str, Callable[[DataConfig], None]] = {}


def root_of(cfg: DataConfig) -> Path:
    return Path(os.path.abspath(os.path.expanduser(cfg.root)))


def require(path: Path, expected: str, downloadable: bool = False, kind: str | None = None) -> Path:
    """`path` must exist, and with `kind` be a folder ("dir") or a regular file ("file");
    else name it and what belongs there. A file where a folder belongs (or a FIFO where a
    list belongs, which would block the read) is named as such, not as missing."""
    if not path.exists():
        if path.is_symlink():
            raise ConfigError(f"data.root: {path} is a symbolic link to {os.readlink(path)}, which does not exist "
                              f"(or is a loop of links); expected {expected}")
        hint = ", or set data.download: true" if downloadable else ""
        raise ConfigError(f"data.root: {path} not found; expected {expected}{hint}")
    if kind == "dir" and not path.is_dir():
        raise ConfigError(f"data.root: {path} is a file, not a folder; expected {expected}")
    if kind == "file" and not path.is_file():
        found = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise ConfigError(f"data.root: {path} is {found}; expected {expected}")
    return path


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """An OSError while reading `path` (no permission, an I/O error) is a ConfigError naming it."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"data.root: {path} could not be read ({e.strerror or e})") from None


def subfolders(path: Path) -> list[str]:
    """The names of the folders in `path` (links to folders included), sorted."""
    with reading(path):
        return sorted(d.name for d in path.iterdir() if d.is_dir())


def read_bytes(path: Path) -> bytes:
    with reading(path):
        return path.read_bytes()


def read_text(path: Path) -> str:
    """A dataset's text file (lists, annotations) as UTF-8; one that is not is a ConfigError naming it."""
    with reading(path):
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"data.root: {path} is not UTF-8 text ({e})") from None


def download(name: str, root: Path, archive) -> None:
    """Fetch and unpack the archive of torchvision's dataset class `archive` (its url, file name
    and md5) into `root`. Only the archive is used: torchvision's dataset classes would then
    unpickle the files themselves. No network or a wrong checksum is a ConfigError."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(archive.url, str(root), filename=archive.filename, md5=archive.tgz_md5)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a checksum mismatch a RuntimeError
        raise ConfigError(f"data.download: could not fetch {name} from {archive.url} into {root} "
                          f"({type(e).__name__}: {e}); put its files there by hand and set data.download: false") \
            from None


DOWNLOADABLE = ("cifar10", "cifar100", "stl10")  # torchvision fetches these; the rest are manual


def check_config(cfg: DataConfig) -> None:
    """Every data.* check that does not touch the disk (the config validation and
    build_dataset both ask here)."""
    DATASETS.get(cfg.name, key="data.name")

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(cfg.resolution) or cfg.resolution < 8:
        raise ConfigError(f"data.resolution must be an integer >= 8, got {cfg.resolution!r}")
    if not is_int(cfg.num_workers) or cfg.num_workers < -1:
        raise ConfigError(f"data.num_workers must be an integer >= 0, or -1 for auto; got {cfg.num_workers!r}")
    if not is_int(cfg.num_images) or cfg.num_images < 0:
        raise ConfigError(f"data.num_images must be an integer >= 0 (0 = default), got {cfg.num_images!r}")
    if not is_int(cfg.split_seed):
        raise ConfigError(f"data.split_seed must be an integer, got {cfg.split_seed!r}")
    if isinstance(cfg.test_fraction, bool) or not isinstance(cfg.test_fraction, (int, float)) \
            or not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be a number in (0, 1), got {cfg.test_fraction!r}")
    if cfg.augment not in (None, True, False):
        raise ConfigError(f"data.augment must be true, false or null (dataset default), got {cfg.augment!r}")
    if cfg.download and cfg.name not in DOWNLOADABLE:
        raise ConfigError(f"data.download: '{cfg.name}' cannot be downloaded by this toolkit (only "
                          f"{', '.join(DOWNLOADABLE)} can); put its files under data.root and set download: false")
    if cfg.name in OPTION_CHECKS:
        OPTION_CHECKS[cfg.name](cfg)


def build_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """The dataset `cfg.name` for split 'train' or 'test'."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_config(cfg)  # again: a DataConfig may be built by hand (eval CLIs, tests)
    return DATASETS.get(cfg.name)(cfg, split)


def augment_flag(cfg: DataConfig, split: str, default: bool = False) -> bool:
    """Augmentation is for training only; the test split is always deterministic."""
    return split == "train" and (default if cfg.augment is None else cfg.augment)


def no_augment(cfg: DataConfig) -> None:
    if cfg.augment:
        raise ConfigError(f"data.augment: {cfg.name} is held in memory and its items are the stored images; "
                          f"augmentation is available for stl10 (crop + flip) and disk datasets (flip)")

