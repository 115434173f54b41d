"""An endless, resumable, process-sharded stream of training batches.

The order is a function of (seed, epoch) only: every process computes the same
permutation, takes its slice of each global batch, and the stream's position
(epoch, batch index) is two integers, saved with every checkpoint, so a resumed run
sees exactly the batches it would have seen.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Sampler

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


class _Slice(Sampler[int]):
    """This process's indices for batches `start..` of one epoch."""

    def __init__(self, stream: "BatchStream"):
        self.stream = stream

    def __iter__(self):
        s = self.stream
        perm = s.permutation(s.epoch)
        for b in range(s.index, s.batches_per_epoch):
            lo = b * s.global_batch + s.rank * s.batch_size
            yield from perm[lo : lo + s.batch_size].tolist()

    def __len__(self) -> int:
        return (self.stream.batches_per_epoch - self.stream.index) * self.stream.batch_size


class BatchStream:
    def __init__(self, dataset, global_batch: int, *, seed: int, rank: int = 0, world: int = 1,
                 device: torch.device | str = "cpu", data_cfg=None):
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
        self.epoch, self.index = 0, 0
        self._loader_kwargs = {} if dataset.in_memory else make_loader_kwargs(dataset, data_cfg)
        self._it = None
        self._perm, self._perm_epoch = None, -1

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "data_order", epoch))
        return torch.randperm(len(self.dataset), generator=g)

    def _epoch_permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:  # computed once per epoch, not per batch
            self._perm, self._perm_epoch = self.permutation(self.epoch), self.epoch
        return self._perm

    def __next__(self) -> Batch:
        if self.index >= self.batches_per_epoch:
            self.close()  # a new DataLoader (and workers) for the new epoch's order
            self.epoch, self.index = self.epoch + 1, 0
        if self.dataset.in_memory:
            # No workers: index the uint8 tensor and convert on the device.
            lo = self.index * self.global_batch + self.rank * self.batch_size
            idx = self._epoch_permutation()[lo : lo + self.batch_size]
            x = to_float(self.dataset.images[idx].to(self.device, non_blocking=True))
            y = self.dataset.labels[idx].to(self.device, non_blocking=True)
        else:
            if self._it is None:
                loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=_Slice(self), drop_last=True,
                                    worker_init_fn=_outlive_stop_signals, **self._loader_kwargs)
                with _stop_signals_blocked():  # the workers start here
                    self._it = iter(NamedErrors(loader))  # a bad image in a worker: its message, not its traceback
            x, y = next(self._it)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.index += 1
        return Batch(x, y)

    def close(self) -> None:
        """Stop the DataLoader's workers now, not whenever the iterator is collected (a
        process exiting with workers alive waits for them)."""
        it, self._it = self._it, None
        if it is not None:
            it.close()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
