"""An endless, resumable, process-sharded stream of training batches.

The order is a function of (seed, epoch) only: every process computes the same
permutation, takes its slice of each global batch, and the stream's position
(epoch, images of the epoch's order read so far) is two integers, saved with every
checkpoint, so a resumed run sees exactly the batches it would have seen. The position
counts images, not batches: a run resumed with another `train.batch_size` (or another
number of processes) continues at the same image of the order, and sees the rest of
the epoch once.

Disk datasets decode in DataLoader workers, and their random augmentation (flips,
crops) must not depend on which worker decodes an item or on where a resumed run
created its iterator. So every item is decoded under a seed of its own (torch's, Python's
and NumPy's generators), a function of (run seed, epoch, position in the epoch's order),
and the loader's workers, built once and kept across epochs, take their base seed from a
generator seeded by the run seed: the stream never draws from the process's RNG (the
trainer's noise would otherwise depend on when an iterator was created).
"""
from __future__ import annotations

import random
import signal
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import NamedErrors, make_loader_kwargs, to_float
from .objective import Batch
from .registry import ConfigError
from .seeds import derive_seed


def _outlive_stop_signals(worker_id: int) -> None:
    # Ctrl-C and a scheduler's SIGTERM reach every process of the job, data workers too,
    # while the training process still needs them to finish its step and save. Workers
    # ignore SIGINT and the first SIGTERM; they exit when the training process closes the
    # stream, and a second SIGTERM (the DataLoader's own shutdown of a stuck worker)
    # still ends them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    # a signal that came while the worker started waited (see _stop_signals_blocked): absorbed now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _stop_signals_blocked():
    """SIGINT and SIGTERM blocked in this thread while the DataLoader forks its workers. A
    worker inherits the mask, so a signal sent to the whole job before
    `_outlive_stop_signals` runs (until then torch's own SIGTERM handler ends the worker)
    stays pending until the worker absorbs it; here it is delivered on leaving."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Slice(Sampler[tuple[int, int]]):
    """This process's (index, augmentation seed) pairs for the batches of one epoch from
    the stream's position on.

    The item at position p of the epoch's order gets seed base + p: the same on every
    process and every worker, and the same whether the run was resumed or not."""

    def __init__(self, stream: "BatchStream"):
        self.stream = stream

    def __iter__(self):
        s = self.stream
        perm, base = s.permutation(s.epoch), s.augment_seed(s.epoch)
        for start in range(s.position, s.epoch_end() + 1, s.global_batch):
            lo = start + s.rank * s.batch_size
            for pos, i in enumerate(perm[lo : lo + s.batch_size].tolist(), start=lo):
                yield i, base + pos

    def __len__(self) -> int:
        s = self.stream
        return max(0, (s.epoch_end() - s.position) // s.global_batch + 1) * s.batch_size


class _Seeded(Dataset):
    """dataset[i] decoded under its own seed: items are (i, seed) pairs from _Slice. torch's,
    Python's and NumPy's generators are all seeded, so a transform may draw from any of
    them; their state is put back afterwards (it matters without workers). The workers'
    own seeds therefore never reach an item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        i, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[i]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class BatchStream:
    def __init__(self, dataset, global_batch: int, *, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", data_cfg=None, channels_last: bool = False):
        if global_batch % world:
            raise ConfigError(f"train.batch_size: {global_batch} is not divisible by the {world} processes")
        self.dataset, self.seed, self.rank, self.world = dataset, seed, rank, world
        self.global_batch, self.batch_size = global_batch, global_batch // world
        self.batches_per_epoch = len(dataset) // global_batch
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"train.batch_size: {global_batch} is larger than the training set ({len(dataset)} images)"
            )
        self.device = torch.device(device)
        self.channels_last = channels_last  # the layout the nets run in (the trainer's GPU path)
        self.epoch, self.position = 0, 0  # images of the epoch's order read so far
        self._loader_kwargs = {} if dataset.in_memory else make_loader_kwargs(dataset, data_cfg, self.device)
        self._loader, self._it, self._it_epoch = None, None, -1
        self._perm, self._perm_epoch = None, -1
        # An in-memory dataset lives on the training device (uploaded once; on the CPU
        # this is the dataset's own tensor) and every batch is indexed there, the
        # permutation too (moved once per epoch): no host-to-device copy per step, which
        # from pageable memory would also wait for the GPU.
        if dataset.in_memory:
            self._images, self._labels = dataset.images.to(self.device), dataset.labels.to(self.device)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "data_order", epoch))
        return torch.randperm(len(self.dataset), generator=g)

    def augment_seed(self, epoch: int) -> int:
        """Base of the epoch's per-item augmentation seeds (< 2^62, so base + position fits)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 0x5EED_0000_0000)
        return int(torch.randint(2**62, (), generator=g))

    def epoch_end(self) -> int:
        """The last position a global batch may start at: an epoch ends where fewer than a
        global batch of its order remain (those images wait for a later epoch's order)."""
        return len(self.dataset) - self.global_batch

    def _epoch_permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:  # computed once per epoch, not per batch
            self._perm, self._perm_epoch = self.permutation(self.epoch).to(self.device), self.epoch
        return self._perm

    def __next__(self) -> Batch:
        if self.position > self.epoch_end():
            self.epoch, self.position = self.epoch + 1, 0
        # This process's slice of the global batch: dataset indices (objectives with
        # per-image state read them from the batch).
        lo = self.position + self.rank * self.batch_size
        idx = self._epoch_permutation()[lo : lo + self.batch_size]
        if self.dataset.in_memory:
            # No workers: index the uint8 tensor and convert on the device.
            x, y = to_float(self._images[idx]), self._labels[idx]
        else:
            if self._it is None or self._it_epoch != self.epoch:  # the new epoch's order; workers stay up
                self._it, self._it_epoch = self._epoch_iterator(), self.epoch
            x, y = next(self._it)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.position += self.global_batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, idx, self.epoch)

    def _epoch_iterator(self):
        """The loader's iterator over this epoch's batches from the position on. The loader is built
        once: its workers (persistent) decode every epoch, and a new iterator only resets
        them with the new order (_Slice reads the epoch and position when it starts)."""
        if self._loader is None:
            # The generator gives the workers their base seed (drawn once: they persist);
            # without one the DataLoader would draw it from the process's RNG. Items never
            # see it (_Seeded), so it need not follow the epoch.
            workers_seed = torch.Generator().manual_seed(derive_seed(self.seed, "loader_workers", 0))
            self._loader = NamedErrors(DataLoader(
                _Seeded(self.dataset), batch_size=self.batch_size, sampler=_Slice(self), drop_last=True,
                generator=workers_seed, worker_init_fn=_outlive_stop_signals, **self._loader_kwargs))
        with _stop_signals_blocked():  # the workers start here (the first time)
            return iter(self._loader)  # a bad image in a worker: its message, not its traceback

    def close(self) -> None:
        """Stop the DataLoader's workers now, not whenever the iterator is collected (a
        process exiting with workers alive waits for them)."""
        it, self._it, self._loader = self._it, None, None
        if it is not None:
            it.close()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved position. Checkpoints that counted batches ({"epoch",
        "index"}) are read at this stream's batch size, the one they were saved with
        unless train.batch_size changed."""
        self.close()
        position = state["position"] if "position" in state else int(state["index"]) * self.global_batch
        self.epoch, self.position = int(state["epoch"]), int(position)
