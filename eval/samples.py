"""The two sides torch-fidelity reads, as uint8 RGB [3, H, W] images.

- `UInt8Images`: stored images (a tensor or an arena.data dataset).
- A generator's n seeded samples: `LatentStream` draws the n latents of a seed in index
  order, LATENT_CHUNK at a time (memory bounded for any n; the latents depend on n and the
  seed only). `generate_samples` renders the indices rank::world of one process and
  `assemble` interleaves the shards back, so the n images are the same for any number of
  processes and any batch size; `RenderedSamples` renders them batch by batch as
  torch-fidelity reads them, holding one batch.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from arena.data import to_uint8
from arena.registry import ConfigError

LATENT_CHUNK = 50000  # latents per draw from the seeded generator (n <= this: one draw, latent(n, g))


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """uint8 [C, H, W] -> [3, H, W]: gray repeated, RGB kept."""
    if x.shape[0] == 1:
        return x.expand(3, -1, -1).contiguous()
    if x.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels, got image of shape {tuple(x.shape)}")
    return x


class UInt8Images(Dataset):
    """Images as torch-fidelity wants them: uint8 RGB [3, H, W], no labels.

    `source`: a float [-1, 1] or uint8 tensor [N, C, H, W], or a dataset whose items
    are (x float [C, H, W] in [-1, 1], label) as arena.data's. `indices` picks a subset.
    """

    def __init__(self, source: torch.Tensor | Dataset, indices: Sequence[int] | torch.Tensor | None = None):
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if torch.is_tensor(source):
            if source.dim() != 4:
                raise ValueError(f"expected images [N, C, H, W], got shape {tuple(source.shape)}")
            self.images, self.dataset = to_uint8(source), None
        elif getattr(source, "in_memory", False):
            self.images, self.dataset = source.images, None  # the stored uint8, no float round trip
        else:
            self.images, self.dataset = None, source

    def __len__(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        return len(self.images) if self.images is not None else len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        j = int(self.indices[i]) if self.indices is not None else i
        if self.images is not None:
            return _rgb(self.images[j])
        item = self.dataset[j]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return _rgb(to_uint8(x))



class LatentStream:
    """The n latents of `seed` in index order, drawn LATENT_CHUNK at a time from
    torch.Generator().manual_seed(seed): memory stays bounded for any n, and the latents
    depend on n and the seed only (never on batch size or processes). For n <= LATENT_CHUNK
    they are latent(n, g) of a single draw."""

    def __init__(self, latent: Callable[[int, torch.Generator], torch.Tensor], n: int, seed: int):
        self.latent, self.n, self.seed = latent, n, seed
        self._restart()

    def _restart(self) -> None:
        self.g = torch.Generator().manual_seed(self.seed)
        self.start, self.z = 0, self.latent(min(LATENT_CHUNK, self.n), self.g)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Latents of the ascending indices `idx`; reading forward draws each chunk once."""
        if len(idx) and int(idx[0]) < self.start:
            self._restart()  # a step back: draw again from the seed
        parts = []
        while True:
            end = self.start + len(self.z)
            here = idx[(idx >= self.start) & (idx < end)]
            if len(here):
                parts.append(self.z[here - self.start])
            if not len(idx) or int(idx[-1]) < end:
                return torch.cat(parts) if parts else self.z[:0]
            self.start, self.z = end, self.latent(min(LATENT_CHUNK, self.n - end), self.g)


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> range:
    """The sample indices rendered by `rank`: rank, rank + world_size, ..."""
    return range(rank, n, world_size)


@torch.no_grad()
def generate_samples(generate: Callable[[torch.Tensor], torch.Tensor],
                     latent: Callable[[int, torch.Generator], torch.Tensor], n: int, *, seed: int,
                     batch_size: int = 100, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's shard of n samples (indices rank::world_size) as uint8 [len(shard), C, H, W]
    on the CPU; assemble(shards) is the same n images for any world_size and batch_size."""
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    stream = LatentStream(latent, n, seed)
    idx = torch.arange(rank, n, world_size)
    parts = [to_uint8(generate(stream.rows(idx[i:i + batch_size]))).cpu() for i in range(0, len(idx), batch_size)]
    if not parts:  # more ranks than samples: render one to learn the shape, keep none
        parts = [to_uint8(generate(stream.rows(torch.arange(1)))).cpu()[:0]]
    return torch.cat(parts)


def assemble(shards: Sequence[torch.Tensor], n: int, world_size: int) -> torch.Tensor:
    """Interleave per-rank shards (rank order) back into index order."""
    if len(shards) != world_size:
        raise ValueError(f"expected {world_size} shards, got {len(shards)}")
    out = None
    for rank, shard in enumerate(shards):
        k = len(shard_indices(n, rank, world_size))
        if len(shard) != k:
            raise ValueError(f"shard {rank} has {len(shard)} samples, expected {k}")
        if out is None:
            out = shard.new_empty((n, *shard.shape[1:]))
        out[rank::world_size] = shard.to(out.device)
    return out


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to release by hand
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc's malloc_trim). Rendering a batch
    allocates and frees tensors far larger than the small feature tensors torch-fidelity
    keeps between them; glibc reuses those holes badly, and without this the process grew
    by up to ~35 KB a 64 px sample (measured), as if the images were kept."""
    if _TRIM is not None:
        _TRIM(0)


class RenderedSamples(Dataset):
    """n samples as torch-fidelity reads them (uint8 RGB [3, H, W]), rendered batch_size at
    a time when first asked for, so one batch of images is held, not n. The images equal
    generate_samples' for one process. torch-fidelity reads in the calling process
    (compute_metrics asks it for no DataLoader workers), in order."""

    def __init__(self, generate: Callable[[torch.Tensor], torch.Tensor],
                 latent: Callable[[int, torch.Generator], torch.Tensor], n: int, *, seed: int, batch_size: int):
        if n < 1:
            raise ConfigError(f"number of samples must be >= 1, got {n}")
        self.generate, self.n, self.batch_size = generate, n, batch_size
        self.stream = LatentStream(latent, n, seed)
        self.block, self.images = -1, None

    def __len__(self) -> int:
        return self.n

    @torch.no_grad()
    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        block = i // self.batch_size
        if block != self.block:
            self.images = None
            release_free_memory()
            start = block * self.batch_size
            z = self.stream.rows(torch.arange(start, min(start + self.batch_size, self.n)))
            self.block, self.images = block, to_uint8(self.generate(z)).cpu()
        return _rgb(self.images[i - block * self.batch_size])
