"""Datasets by name: real loaders of the real on-disk formats, images as float [-1, 1].

Every dataset is an `ImageDataset` whose items are `(x, y)`: x float32 [C, H, W] in
[-1, 1]; y a LongTensor scalar class, a LongTensor [K] of 0/1 (multi-label), or -1
(unlabeled). Small datasets live in memory as uint8 (`.images`, `.labels`) so the
trainer can batch them without a DataLoader; big ones decode from disk per item.

No network unless `data.download: true` (only cifar10, cifar100 and stl10 can be
downloaded, through torchvision). A missing root fails with the path and what the
loader expected there.
"""
from __future__ import annotations

import bisect
import contextlib
import os
import pickle
import string
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from arena.registry import ConfigError, Registry, suggest

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


Builder = Callable[[DataConfig, str], "ImageDataset"]
DATASETS: Registry[Builder] = Registry("dataset")


# ---------------------------------------------------------------------------- pixels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1)."""
    return images.float() / 127.5 - 1


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size], bilinear with antialias.

    Results are rounded back to uint8 so every dataset is 8-bit quantised the same
    way, whether it came from memory or disk (reference statistics depend on it).
    Chunked so 50k images at 64 px never need one 2 GB float copy.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def pil_to_uint8(img: Image.Image, resolution: int, crop: int | None = None) -> torch.Tensor:
    """PIL image -> uint8 [3, resolution, resolution].

    Optional square center crop of `crop` px first (CelebA), then resize the shorter
    side to `resolution` and center-crop the longer one, so aspect ratio is kept.
    """
    img = img.convert("RGB")
    if crop is not None:
        w, h = img.size
        s = min(crop, w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    w, h = img.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        # PIL widens the bicubic kernel when shrinking, i.e. it antialiases.
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # HWC -> CHW


# ---------------------------------------------------------------------------- datasets


class ImageDataset(torch.utils.data.Dataset):
    """Base: labels, shape facts and `describe`; subclasses supply `__getitem__`."""

    in_memory: bool = False

    def __init__(self, name: str, split: str, labels: torch.Tensor, channels: int, resolution: int,
                 num_classes: int, multilabel: bool = False, class_names: list[str] | None = None):
        self.name = name
        self.split = split
        self.labels = labels.long()  # [N], or [N, K] 0/1 when multilabel; -1 = unlabeled
        self.channels = channels
        self.resolution = resolution
        self.num_classes = num_classes  # 0 when unlabeled; K for multi-label
        self.multilabel = multilabel
        self.class_names = class_names or []

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        if self.num_classes == 0:
            classes = "unlabeled"
        elif self.multilabel:
            classes = f"{self.num_classes} binary attributes"
        else:
            classes = f"{self.num_classes} classes"
            unlabeled = int((self.labels < 0).sum())
            if unlabeled:
                classes += f", {unlabeled} unlabeled (label -1)"
        size = f"{self.channels}x{self.resolution}x{self.resolution}"
        return f"{self.name} {self.split}: {len(self)} images, {size}, {classes}"


class InMemoryDataset(ImageDataset):
    """uint8 images [N, C, H, W] held in memory; items are exactly to_float(images[i]), labels[i]."""

    in_memory = True

    def __init__(self, name: str, split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 class_names: list[str] | None = None):
        assert images.dtype == torch.uint8 and images.shape[-1] == images.shape[-2] and len(images) == len(labels)
        super().__init__(name, split, labels, images.shape[1], images.shape[-1], num_classes,
                         class_names=class_names)
        self.images = images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[i]), self.labels[i]


class DecodedDataset(ImageDataset, ABC):
    """Images decoded one by one (files, lmdb values), with bad-file handling and flips.

    Subclasses give `_decode(i) -> PIL image` and `_item_name(i)`. An image that fails
    to decode raises a ConfigError naming it, or with `skip_bad_files` is replaced by
    the next readable index (deterministic), recorded in `bad_files` and warned once.
    With DataLoader workers each worker keeps its own `bad_files`.
    """

    def __init__(self, name: str, split: str, labels: torch.Tensor, resolution: int, num_classes: int,
                 augment: bool, skip_bad_files: bool, crop: int | None = None, multilabel: bool = False,
                 class_names: list[str] | None = None):
        super().__init__(name, split, labels, 3, resolution, num_classes, multilabel, class_names)
        self.augment = augment  # random horizontal flip
        self.skip_bad_files = skip_bad_files
        self.crop = crop
        self.bad_files: set[str] = set()

    @abstractmethod
    def _decode(self, i: int) -> Image.Image:
        """Image i as a PIL image (raises on an unreadable file)."""

    @abstractmethod
    def _item_name(self, i: int) -> str:
        """What to call image i in an error message (a file name or a key)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            try:
                x = pil_to_uint8(self._decode(j), self.resolution, self.crop)
                break
            except Exception as e:  # PIL reports bad data as OSError, SyntaxError, ValueError, ...
                name = self._item_name(j)
                if not self.skip_bad_files:
                    raise ConfigError(f"unreadable image {name} ({type(e).__name__}: {e}); fix or remove it, "
                                      f"or set data.skip_bad_files: true to skip such files") from e
                if name not in self.bad_files:
                    self.bad_files.add(name)
                    warnings.warn(f"skipping unreadable image {name} ({type(e).__name__}: {e})")
        else:
            raise ConfigError(f"{self.name} {self.split}: none of the {n} images could be read")
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_float(x), self.labels[j]  # the label of the image actually returned


class FileDataset(DecodedDataset):
    """One image file per item (CelebA, Tiny ImageNet, image folders)."""

    def __init__(self, name: str, split: str, files: list[Path], labels: torch.Tensor, **kwargs):
        super().__init__(name, split, labels, **kwargs)
        self.files = files

    def _decode(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as img:
            return img.convert("RGB")  # forces the full decode inside the `with`

    def _item_name(self, i: int) -> str:
        return str(self.files[i])


# STL-10 binary format: uint8, each image 3 x 96 x 96, channel planes stored
# column-major (so read as (3, 96, 96) it is transposed: swap the last two axes).
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
    path = folder / "class_names.txt"
    return path.read_text().split() if path.is_file() else []


# LSUN scene categories that torchvision's LSUN accepts (f"{category}_train" / "_val").
LSUN_CATEGORIES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room",
                   "kitchen", "living_room", "restaurant", "tower")


class LSUNDataset(DecodedDataset):
    """LSUN lmdb databases (values are encoded WEBP/JPEG images), one per category, concatenated.

    Each database is read by torchvision's LSUNClass (what torchvision's LSUN concatenates
    for classes=[f"{c}_train", ...]); we hold them in `_open_lsun_db`'s per-process table
    because py-lmdb refuses to open one environment twice in a process.
    """

    def __init__(self, paths: list[Path], split: str, **kwargs):
        self.paths = paths  # only paths, so the dataset pickles to worker processes
        sizes = [len(_open_lsun_db(p)) for p in paths]
        self.starts = np.cumsum([0] + sizes[:-1]).tolist()
        labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
        names = [p.name.rsplit("_", 2)[0] for p in paths]  # bedroom_train_lmdb -> bedroom
        super().__init__("lsun", split, labels, num_classes=len(paths), class_names=names, **kwargs)

    def _locate(self, i: int) -> tuple[object, int]:
        k = bisect.bisect_right(self.starts, i) - 1
        return _open_lsun_db(self.paths[k]), i - self.starts[k]

    def _decode(self, i: int) -> Image.Image:
        db, j = self._locate(i)
        img, _ = db[j]
        return img

    def _item_name(self, i: int) -> str:
        db, j = self._locate(i)
        return f"{db.root} key {db.keys[j].decode(errors='replace')}"


_lsun_dbs: dict[str, object] = {}  # lmdb folder -> torchvision LSUNClass, for this process
_lsun_pid = os.getpid()


def _open_lsun_db(path: Path):
    """torchvision's LSUNClass for one lmdb folder, opened once per process.

    LSUNClass lists all keys once and pickles them to `_cache_<letters of the path>`
    in the current directory. We open it inside the dataset root (or the temp dir if
    that is read-only) so the cache sits next to the data instead of littering the
    working directory, and rebuild a cache whose key count disagrees with the db.
    """
    global _lsun_pid
    from torchvision.datasets.lsun import LSUNClass

    if _lsun_pid != os.getpid():
        # Forked (DataLoader workers): an LMDB environment must not be used across
        # fork(), and py-lmdb only lets us reopen it once the inherited copy is closed.
        for db in _lsun_dbs.values():
            db.env.close()
        _lsun_dbs.clear()
        _lsun_pid = os.getpid()
    key = str(path)
    if key not in _lsun_dbs:
        cache_dir = path.parent if os.access(path.parent, os.W_OK) else Path(tempfile.gettempdir())
        with _working_directory(cache_dir):
            db = LSUNClass(root=key)
            if len(db.keys) != db.length:  # a cache left by an older database at this path
                db.env.close()
                (cache_dir / ("_cache_" + "".join(c for c in key if c in string.ascii_letters))).unlink()
                db = LSUNClass(root=key)
        _lsun_dbs[key] = db
    return _lsun_dbs[key]


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    # chdir is process-wide; it is only held while torchvision writes its key cache.
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------- checks


def _root(cfg: DataConfig) -> Path:
    return Path(os.path.abspath(os.path.expanduser(cfg.root)))


def _require(path: Path, expected: str, downloadable: bool = False) -> Path:
    """`path` must exist; else name it and what belongs there."""
    if not path.exists():
        hint = ", or set data.download: true" if downloadable else ""
        raise ConfigError(f"data.root: {path} not found; expected {expected}{hint}")
    return path


DOWNLOADABLE = ("cifar10", "cifar100", "stl10")  # torchvision fetches these; the rest are manual


def check_config(cfg: DataConfig) -> None:
    """Option checks that do not touch the disk."""
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
    if cfg.name == "lsun":
        if not isinstance(cfg.categories, (list, tuple)) or not cfg.categories:
            raise ConfigError(f"data.categories must be a non-empty list of LSUN categories "
                              f"({', '.join(LSUN_CATEGORIES)}), got {cfg.categories!r}")
        for c in cfg.categories:
            if c not in LSUN_CATEGORIES:
                raise ConfigError(f"data.categories: unknown LSUN category {c!r}{suggest(c, LSUN_CATEGORIES)}; "
                                  f"valid choices: {', '.join(LSUN_CATEGORIES)}")
        if len(set(cfg.categories)) != len(cfg.categories):
            raise ConfigError(f"data.categories has duplicates: {cfg.categories!r}")


def build_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """The dataset `cfg.name` for split 'train' or 'test'."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    builder = DATASETS.get(cfg.name, key="data.name")
    check_config(cfg)
    return builder(cfg, split)


def _augment(cfg: DataConfig, split: str, default: bool = False) -> bool:
    """Augmentation is for training only; the test split is always deterministic."""
    return split == "train" and (default if cfg.augment is None else cfg.augment)


def _no_augment(cfg: DataConfig) -> None:
    if cfg.augment:
        raise ConfigError(f"data.augment: {cfg.name} is held in memory and its items are the stored images; "
                          f"augmentation is available for stl10 (crop + flip) and disk datasets (flip)")


# ---------------------------------------------------------------------------- loaders


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
    _no_augment(cfg)
    root = _root(cfg)
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
    path = _require(root / folder, f"{what} there", downloadable=True)
    for f in files:
        _require(path / f, f"{what} in {path}", downloadable=True)
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


@DATASETS.register("stl10")
def _stl10(cfg: DataConfig, split: str) -> ImageDataset:
    """train = 5k labeled train + 100k unlabeled (label -1), or the 5k alone with
    data.labeled_only; test = 8k labeled test."""
    root = _root(cfg)
    if cfg.download:
        from torchvision.datasets import STL10
        STL10(str(root), split="test", download=True)  # downloads + extracts everything; loads only test
    what = "STL-10's binary files (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin)"
    folder = _require(root / "stl10_binary", f"{what} there", downloadable=True)
    pairs = [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)] if split == "train" \
        else [("test_X.bin", "test_y.bin")]
    if cfg.labeled_only:
        pairs = pairs[:1]
    parts, labels = [], []
    for images_file, labels_file in pairs:
        path = _require(folder / images_file, f"{what} in {folder}", downloadable=True)
        size = path.stat().st_size
        if size % (3 * STL_SIDE * STL_SIDE):
            raise ConfigError(f"data.root: {path} has {size} bytes, not a multiple of one 3x96x96 image")
        n = size // (3 * STL_SIDE * STL_SIDE)
        if labels_file is None:
            y = torch.full((n,), -1, dtype=torch.long)
        else:
            y = torch.from_numpy(np.fromfile(_require(folder / labels_file, f"{what} in {folder}", True),
                                             dtype=np.uint8).astype(np.int64)) - 1  # 1-based on disk
            if len(y) != n:
                raise ConfigError(f"data.root: {folder / labels_file} has {len(y)} labels for {n} images")
        parts.append(path)
        labels.append(y)
    return STL10Dataset(split, parts, torch.cat(labels), cfg.resolution, _augment(cfg, split, default=True))


# Aligned CelebA images are 178x218 with the face centered; a 140x140 center crop
# keeps the face and hair and drops most background (the crop commonly used for
# 64x64 GAN training), and is then resized to the resolution.
CELEBA_CROP = 140


@DATASETS.register("celeba")
def _celeba(cfg: DataConfig, split: str) -> ImageDataset:
    """Aligned CelebA; train = partition 0, test = partition 2; 40 attributes as 0/1."""
    folder = _require(_root(cfg) / "celeba", "the aligned CelebA folder (img_align_celeba/, "
                      "list_eval_partition.txt, list_attr_celeba.txt) there")
    images_dir = _require(folder / "img_align_celeba", "the aligned CelebA jpgs (000001.jpg, ...) there")
    partition_file = _require(folder / "list_eval_partition.txt",
                              "CelebA's partition list ('<file> <0|1|2>' per line) there")
    attr_file = _require(folder / "list_attr_celeba.txt",
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
                       augment=_augment(cfg, split), skip_bad_files=cfg.skip_bad_files)


@DATASETS.register("lsun")
def _lsun(cfg: DataConfig, split: str) -> ImageDataset:
    """LSUN scene categories; train = <category>_train_lmdb, test = <category>_val_lmdb; label = category index."""
    try:
        import lmdb  # noqa: F401  (torchvision's LSUNClass imports it lazily)
    except ImportError as e:
        raise ConfigError("data.name: lsun needs the 'lmdb' package to read LSUN's databases (pip install lmdb)") from e
    root = _root(cfg)
    suffix = "train" if split == "train" else "val"
    for c in cfg.categories:
        _require(root / f"{c}_{suffix}_lmdb", f"LSUN's lmdb database for category '{c}' "
                 f"(the unzipped {c}_{suffix}_lmdb folder from LSUN's download.py) there")
    return LSUNDataset([root / f"{c}_{suffix}_lmdb" for c in cfg.categories], split, resolution=cfg.resolution,
                       augment=_augment(cfg, split), skip_bad_files=cfg.skip_bad_files)


@DATASETS.register("tinyimagenet")
def _tinyimagenet(cfg: DataConfig, split: str) -> ImageDataset:
    """Tiny ImageNet (64x64, 200 classes); train = train/, test = val/ (the test/ split has no labels)."""
    root = _root(cfg)
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    layout = "Tiny ImageNet (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"
    _require(base, f"{layout} there")
    wnids = sorted(_require(base / "wnids.txt", f"{layout} in {base}").read_text().split())
    class_to_idx = {w: k for k, w in enumerate(wnids)}
    files, labels = [], []
    if split == "train":
        for w in wnids:
            images = sorted(_require(base / "train" / w / "images", f"{layout} in {base}").glob("*.JPEG"))
            files += images
            labels += [class_to_idx[w]] * len(images)
    else:
        # val_annotations.txt: tab-separated filename, wnid, bounding box x0 y0 x1 y1
        annotations = _require(base / "val" / "val_annotations.txt", f"{layout} in {base}")
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
                       num_classes=len(wnids), class_names=wnids, augment=_augment(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageDataset:
    """root/train/<class>/** and root/test/<class>/**; classes are train's sorted subfolders."""
    root = _root(cfg)
    layout = "an image folder: train/<class>/<images> and test/<class>/<images>"
    train_dir = _require(root / "train", f"{layout} under {root}")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"data.root: {train_dir} has no class subfolders; expected {layout}")
    class_to_idx = {c: k for k, c in enumerate(classes)}
    split_dir = _require(root / split, f"{layout} under {root}")
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
                       num_classes=len(classes), class_names=classes, augment=_augment(cfg, split),
                       skip_bad_files=cfg.skip_bad_files)


@DATASETS.register("digits")
def _digits(cfg: DataConfig, split: str) -> ImageDataset:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16), 1 channel, stratified seeded split."""
    _no_augment(cfg)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8))[:, None]  # 0..16 -> 0..255
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=cfg.test_fraction,
                                           random_state=cfg.split_seed, stratify=digits.target)
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return InMemoryDataset("digits", split, resize_uint8(images[idx], cfg.resolution), labels[idx], 10,
                           [str(k) for k in range(10)])


SHAPE_KINDS = ("circle", "square", "triangle", "cross")


def make_shapes(n: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n coloured shapes on dark backgrounds: uint8 [n, 3, R, R] and kind labels [n].

    Image k's parameters are row k of one uniform draw, so the first n images of a seed
    are the same for any larger n and for any chunking.
    """
    u = torch.rand(n, 8, generator=torch.Generator().manual_seed(seed))
    kind = (u[:, 0] * len(SHAPE_KINDS)).long().clamp(max=len(SHAPE_KINDS) - 1)
    r = 0.12 + 0.18 * u[:, 1]  # half-size, as a fraction of the side
    cx = r + (1 - 2 * r) * u[:, 2]  # keeps the shape inside the image
    cy = r + (1 - 2 * r) * u[:, 3]
    colour = 0.35 + 0.65 * u[:, 4:7]  # bright foreground
    background = 0.15 * u[:, 7:8]  # dark grey
    coords = (torch.arange(resolution) + 0.5) / resolution  # pixel centers in [0, 1]
    out = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    step = max(1, 2 ** 20 // resolution ** 2)
    for s in range(0, n, step):
        sl = slice(s, s + step)
        dx = coords[None, None, :] - cx[sl, None, None]  # [b, 1, R]
        dy = coords[None, :, None] - cy[sl, None, None]  # [b, R, 1] (y grows downwards)
        rr = r[sl, None, None]
        ax, ay = dx.abs(), dy.abs()
        masks = torch.stack([
            dx ** 2 + dy ** 2 <= rr ** 2,  # circle
            (ax <= 0.8 * rr) & (ay <= 0.8 * rr),  # square
            (dy <= rr) & (ax <= (dy + rr) / 2),  # triangle: apex at cy - r, base 2r wide at cy + r
            ((ax <= rr) & (ay <= rr / 3)) | ((ay <= rr) & (ax <= rr / 3)),  # cross
        ], 1)  # [b, 4, R, R]
        b = masks.shape[0]
        mask = masks.gather(1, kind[sl, None, None, None].expand(b, 1, resolution, resolution))
        img = torch.where(mask, colour[sl, :, None, None], background[sl, :, None, None])
        out[sl] = (img * 255).round().to(torch.uint8)
    return out, kind


@DATASETS.register("shapes")
def _shapes(cfg: DataConfig, split: str) -> ImageDataset:
    """Procedural shapes, label = kind; train and test use different seeds derived from split_seed."""
    _no_augment(cfg)
    n_train = cfg.num_images or 4096
    n = n_train if split == "train" else max(1, n_train // 4)
    images, labels = make_shapes(n, cfg.resolution, seed=2 * cfg.split_seed + (split == "test"))
    return InMemoryDataset("shapes", split, images, labels, len(SHAPE_KINDS), list(SHAPE_KINDS))


# ---------------------------------------------------------------------------- helpers


def make_loader_kwargs(ds: ImageDataset, cfg: DataConfig) -> dict:
    """DataLoader options: workers only for disk datasets, pinned memory only with CUDA."""
    workers = 0
    if not ds.in_memory:
        if cfg.num_workers >= 0:
            workers = cfg.num_workers
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(4, cpus - 1) if cpus > 2 else 0  # leave a core for the training process
    return {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}


def dataset_signature(cfg: DataConfig, split: str) -> dict:
    """The options that determine the images of a split (augmentation off): a cache key.

    Options a dataset ignores are None, so e.g. changing data.root does not
    invalidate the statistics of `shapes`.
    """
    name = cfg.name
    signature = {
        "name": name,
        "root": None if name in ("digits", "shapes") else str(_root(cfg)),
        "resolution": cfg.resolution,
        "categories": list(cfg.categories) if name == "lsun" else None,
        "split": split,
        "num_images": (cfg.num_images or 4096) if name == "shapes" else None,
        "test_fraction": cfg.test_fraction if name == "digits" else None,
        "split_seed": cfg.split_seed if name in ("digits", "shapes") else None,
        "augment": False,
    }
    if name == "stl10":  # only here, so the keys (and caches) of other datasets stay as they were
        signature["labeled_only"] = cfg.labeled_only
    return signature
