"""LSUN scene categories from their lmdb databases, one handle per database and process."""
from __future__ import annotations

import bisect
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arena.registry import ConfigError, suggest

from .base import DecodedDataset, ImageDataset
from .lmdb_keys import database_keys
from .registry import DATASETS, OPTION_CHECKS, DataConfig, augment_flag, require, root_of


# LSUN scene categories that torchvision's LSUN accepts (f"{category}_train" / "_val").
LSUN_CATEGORIES = ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room",
                   "kitchen", "living_room", "restaurant", "tower")


class LSUNDataset(DecodedDataset):
    """LSUN lmdb databases (values are encoded WEBP/JPEG images), one per category, concatenated.

    Each database is a `_LmdbImages`, held in `_open_lsun_db`'s per-process table because
    py-lmdb refuses to open one environment twice in a process.
    """

    def __init__(self, paths: list[Path], split: str, **kwargs):
        self.paths = paths  # only paths, so the dataset pickles to worker processes
        sizes = [len(_open_lsun_db(p)) for p in paths]
        self.starts = np.cumsum([0] + sizes[:-1]).tolist()
        labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
        names = [p.name.rsplit("_", 2)[0] for p in paths]  # bedroom_train_lmdb -> bedroom
        super().__init__("lsun", split, labels, num_classes=len(paths), class_names=names, **kwargs)

    def _locate(self, i: int) -> tuple[_LmdbImages, int]:
        k = bisect.bisect_right(self.starts, i) - 1
        return _open_lsun_db(self.paths[k]), i - self.starts[k]

    def _decode(self, i: int) -> Image.Image:
        db, j = self._locate(i)
        return db.image(j)

    def _item_name(self, i: int) -> str:
        db, j = self._locate(i)
        return f"{db.root} key {db.keys[j].decode(errors='replace')}"


class _LmdbImages:
    """One lmdb database of encoded images, read-only: its keys in order (`lmdb_keys`) and
    the image of the j-th key. The options are those LSUN's own reader uses (no lock file
    written beside read-only data; no readahead on random access)."""

    def __init__(self, path: Path):
        import lmdb

        self.root = str(path)
        try:
            self.env = lmdb.open(self.root, max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
            self.keys = database_keys(self.env, path)
        except (lmdb.Error, OSError) as e:
            raise ConfigError(f"data.root: {path} is not a readable lmdb database ({type(e).__name__}: {e}); "
                              f"expected the unzipped folder from LSUN's download.py (data.mdb inside)") from None

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, j: int) -> Image.Image:
        with self.env.begin(write=False) as txn:
            value = txn.get(self.keys[j])
        if value is None:
            raise KeyError("the key is not in the database")
        with Image.open(io.BytesIO(value)) as img:
            return img.convert("RGB")


_lsun_dbs: dict[str, _LmdbImages] = {}  # real path of an lmdb folder -> its reader, for this process
_lsun_pid = os.getpid()


def _open_lsun_db(path: Path) -> _LmdbImages:
    """The reader of one lmdb folder, opened once per process."""
    global _lsun_pid
    if _lsun_pid != os.getpid():
        # Forked (DataLoader workers): an LMDB environment must not be used across
        # fork(), and py-lmdb only lets us reopen it once the inherited copy is closed.
        for db in _lsun_dbs.values():
            db.env.close()
        _lsun_dbs.clear()
        _lsun_pid = os.getpid()
    key = os.path.realpath(path)
    if key not in _lsun_dbs:
        _lsun_dbs[key] = _LmdbImages(Path(key))
    return _lsun_dbs[key]


@DATASETS.register("lsun")
def _lsun(cfg: DataConfig, split: str) -> ImageDataset:
    """LSUN scene categories; train = <category>_train_lmdb, test = <category>_val_lmdb; label = category index."""
    try:
        import lmdb  # noqa: F401  (torchvision's LSUNClass imports it lazily)
    except ImportError as e:
        raise ConfigError("data.name: lsun needs the 'lmdb' package to read LSUN's databases (pip install lmdb)") from e
    root = root_of(cfg)
    suffix = "train" if split == "train" else "val"
    paths = [require(root / f"{c}_{suffix}_lmdb", f"LSUN's lmdb database for category '{c}' (the unzipped "
                     f"{c}_{suffix}_lmdb folder from LSUN's download.py) there", kind="dir") for c in cfg.categories]
    real = [os.path.realpath(p) for p in paths]
    if len(set(real)) != len(real):  # links making two categories one database: its images would count twice
        same = [p for p, r in zip(paths, real) if real.count(r) > 1]
        raise ConfigError(f"data.root: {', '.join(map(str, same))} are one database ({os.path.realpath(same[0])}) "
                          f"through symbolic links; each category needs its own")
    return LSUNDataset(paths, split, resolution=cfg.resolution,
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
