"""What every probe shares: seeding, train-statistics standardization, minibatches of
images in memory, and the one training loop."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from arena.data import to_float


def seeded(seed: int) -> torch.Generator:
    """Seed the global RNG (weight init, dropout) and return a generator for the data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def standardizer(train: Tensor) -> Callable[[Tensor], Tensor]:
    """x -> (x - mean) / std with the TRAIN statistics, per dimension (std floored at 1e-6)."""
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return lambda x: (x - mu.to(x.device)) / sd.to(x.device)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches of one shuffled pass over n samples; a last batch of one is dropped
    (BatchNorm in training mode needs two samples)."""
    perm = torch.randperm(n, generator=generator)
    for s in range(0, n, batch_size):
        idx = perm[s:s + batch_size]
        if len(idx) >= 2:
            yield idx


def fit(opt: torch.optim.Optimizer, sched, epochs: int, batches: Callable[[], Iterable], loss: Callable,
        after_epoch: Callable[[int, Tensor], None] | None = None) -> None:
    """The probes' one training loop: each epoch one optimizer step on `loss(batch)` for
    every batch of `batches()` (which also puts the nets in training mode), then one
    scheduler step and `after_epoch(epoch, mean training loss)` (a tensor: no host sync
    unless the callback reads it)."""
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in batches():
            value = loss(batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total, count = total + value.detach(), count + 1
        sched.step()
        if after_epoch is not None:
            after_epoch(epoch, total / max(count, 1))


class ImageBatches:
    """Re-iterable (x float [-1, 1], y) batches from uint8 or float images held in memory."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.g) if self.shuffle else torch.arange(n)
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield to_float(self.images[idx]), self.labels[idx]
