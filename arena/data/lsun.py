"""LSUN scene categories from their lmdb databases, one handle per database and process."""
from __future__ import annotations

import bisect
import contextlib
import os
import string
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from arena.registry import ConfigError, suggest

from .base import DecodedDataset, ImageDataset
from .registry import DATASETS, OPTION_CHECKS, DataConfig, augment_flag, require, root_of


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


@DATASETS.register("lsun")
def _lsun(cfg: DataConfig, split: str) -> ImageDataset:
    """LSUN scene categories; train = <category>_train_lmdb, test = <category>_val_lmdb; label = category index."""
    try:
        import lmdb  # noqa: F401  (torchvision's LSUNClass imports it lazily)
    except ImportError as e:
        raise ConfigError("data.name: lsun needs the 'lmdb' package to read LSUN's databases (pip install lmdb)") from e
    root = root_of(cfg)
    suffix = "train" if split == "train" else "val"
    for c in cfg.categories:
        require(root / f"{c}_{suffix}_lmdb", f"LSUN's lmdb database for category '{c}' "
                 f"(the unzipped {c}_{suffix}_lmdb folder from LSUN's download.py) there")
    return LSUNDataset([root / f"{c}_{suffix}_lmdb" for c in cfg.categories], split, resolution=cfg.resolution,
                       augment=augment_flag(cfg, split), skip_bad_files=cfg.skip_bad_files)


def _check_lsun(cfg: DataConfig) -> None:
    """data.categories: a non-empty list of distinct LSUN categories."""
    if not isinstance(cfg.categories, (list, tuple)) or not cfg.categories:
        raise ConfigError(f"data.categories must be a non-empty list of LSUN categories "
                          f"({', '.join(LSUN_CATEGORIES)}), got {cfg.categories!r}")
    for c in cfg.categories:
        if c not in LSUN_CATEGORIES:
            raise ConfigError(f"data.categories: unknown LSUN category {c!r}{suggest(c, LSUN_CATEGORIES)}; "
                              f"valid choices: {', '.join(LSUN_CATEGORIES)}")
    if len(set(cfg.categories)) != len(cfg.categories):
        raise ConfigError(f"data.categories has duplicates: {cfg.categories!r}")


OPTION_CHECKS["lsun"] = _check_lsun
