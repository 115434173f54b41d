"""DataLoader options and the cache key of a split's images."""
from __future__ import annotations

import os

import torch

from arena.registry import ConfigError

from .base import ImageDataset
from .registry import DataConfig, root_of


def make_loader_kwargs(ds: ImageDataset, cfg: DataConfig, device: torch.device | str | None = None) -> dict:
    """DataLoader options: workers only for disk datasets, pinned memory only for batches
    bound to a GPU (`device`; None: wherever CUDA exists). A CPU run on a GPU machine
    pins nothing, so it opens no CUDA context."""
    workers = 0
    if not ds.in_memory:
        if cfg.num_workers >= 0:
            workers = cfg.num_workers
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(4, cpus - 1) if cpus > 2 else 0  # leave a core for the training process
    pin = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}


class NamedErrors:
    """Iterates a DataLoader; a ConfigError raised in a worker process (an unreadable image)
    is raised again with the dataset's own message.

    torch re-raises a worker's exception as the same type whose message is the worker's
    whole traceback (some 48 lines for a bad JPEG); the message the dataset wrote follows
    the traceback's last 'ConfigError: '."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> "NamedErrorsIterator":
        return NamedErrorsIterator(iter(self.loader))


class NamedErrorsIterator:
    """The DataLoader's own iterator, kept (not hidden in a generator) so that `close()`
    can stop its workers at once."""

    _MARK = f"{ConfigError.__module__}.{ConfigError.__qualname__}: "

    def __init__(self, it):
        self.it = it

    def __iter__(self) -> "NamedErrorsIterator":
        return self

    def __next__(self):
        try:
            return next(self.it)
        except ConfigError as e:
            text = str(e)
            if text.startswith("Caught ConfigError in DataLoader worker") and self._MARK in text:
                raise ConfigError(text.rsplit(self._MARK, 1)[1].strip()) from None
            raise

    def close(self) -> None:
        """Shut the worker processes down now (a single-process iterator has none). Waiting
        for garbage collection is not enough: an exception's traceback keeps the iterator
        alive, and persistent workers with it."""
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def dataset_signature(cfg: DataConfig, split: str) -> dict:
    """The options that determine the images of a split (augmentation off): a cache key.

    Options a dataset ignores are None, so e.g. changing data.root does not
    invalidate the statistics of `shapes`.
    """
    name = cfg.name
    signature = {
        "name": name,
        "root": None if name in ("digits", "shapes") else str(root_of(cfg)),
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
