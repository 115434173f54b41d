"""BatchStream: rank partitioning, epoch rollover, and disk datasets read by DataLoader
workers with random augmentation, resumed mid-epoch exactly as an unbroken stream."""
from __future__ import annotations

import os

import pytest
import torch

from arena import checkpoint as ckpt
from arena.data import DataConfig, build_dataset
from arena.stream import BatchStream
from arena.trainer import train
from tests import fixtures
from tests.helpers import assert_same_state, tiny


def take(stream: BatchStream, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches, then the stream's workers stopped: left to the garbage collector, a
    worker iterator's shutdown ran inside a later test and stalled it for minutes."""
    try:
        return [(b.x, b.y) for b in (next(stream) for _ in range(n))]
    finally:
        stream.close()


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for k, ((xa, ya), (xb, yb)) in enumerate(zip(a, b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb), f"batch {k} differs"


# ---------------------------------------------------------------------------- in memory


def test_ranks_partition_each_global_batch_and_epochs_roll_over():
    ds = build_dataset(DataConfig(name="shapes", resolution=8, num_images=22), "train")
    whole = BatchStream(ds, 6, seed=3)
    assert whole.batches_per_epoch == 3  # 22 // 6: the last 4 images of an epoch's order are dropped
    parts = [BatchStream(ds, 6, seed=3, rank=r, world=2) for r in range(2)]
    seen = []
    for k in range(7):  # two epochs and one batch of the third
        epoch, index = divmod(k, 3)
        # the rollover happens when the next batch is drawn: a finished epoch reads (e, 3)
        assert whole.state_dict() == ({"epoch": epoch - 1, "position": 18} if index == 0 and k else
                                      {"epoch": epoch, "position": 6 * index})
        batch = next(whole)
        halves = [next(p) for p in parts]
        assert torch.equal(torch.cat([h.x for h in halves]), batch.x)  # rank order = global batch order
        assert torch.equal(torch.cat([h.y for h in halves]), batch.y)
        order = whole.permutation(epoch)[index * 6:(index + 1) * 6]
        assert torch.equal(batch.x, ds.images[order].float() / 127.5 - 1)
        seen.append(order)
    assert whole.state_dict() == {"epoch": 2, "position": 6}
    epoch0, epoch1 = torch.cat(seen[:3]), torch.cat(seen[3:6])
    assert len(set(epoch0.tolist())) == 18 and len(set(epoch1.tolist())) == 18  # no image twice in an epoch
    assert not torch.equal(epoch0, epoch1)  # a fresh order each epoch
    with pytest.raises(ValueError, match="not divisible by the 4 processes"):
        BatchStream(ds, 6, seed=3, world=4)


def test_resumed_in_memory_stream_continues_the_order():
    ds = build_dataset(DataConfig(name="shapes", resolution=8, num_images=22), "train")
    unbroken = take(BatchStream(ds, 6, seed=1), 5)
    resumed = BatchStream(ds, 6, seed=1)
    resumed.load_state_dict({"epoch": 0, "position": 12})
    assert_same_batches(take(resumed, 3), unbroken[2:])
    legacy = BatchStream(ds, 6, seed=1)  # a checkpoint that counted batches
    legacy.load_state_dict({"epoch": 0, "index": 2})
    assert_same_batches(take(legacy, 3), unbroken[2:])


# ---------------------------------------------------------------------------- disk + workers


@pytest.fixture(scope="module")
def disk_roots(tmp_path_factory):
    out = {}
    for name, make in (("imagefolder", fixtures.make_imagefolder), ("stl10", fixtures.make_stl10)):
        root = tmp_path_factory.mktemp(name)
        make(root)
        out[name] = str(root)
    return out


def disk_cfg(disk_roots, name, **kw):
    return DataConfig(name=name, root=disk_roots[name], resolution=16, augment=True, num_workers=2, **kw)


@pytest.mark.parametrize("name", ["imagefolder", "stl10"])
def test_workers_with_augmentation_resume_mid_epoch_exactly(disk_roots, name):
    """Two workers, random flips (and STL-10's random crops): the batches after a
    mid-epoch resume are the unbroken stream's, and the stream never draws from the
    process's RNG (the trainer's noise must not depend on where a run was resumed)."""
    cfg = disk_cfg(disk_roots, name)
    ds = build_dataset(cfg, "train")
    batch = 2
    per_epoch = len(ds) // batch
    rng = torch.get_rng_state()
    unbroken = take(BatchStream(ds, batch, seed=4, data_cfg=cfg), per_epoch + 2)
    assert torch.equal(torch.get_rng_state(), rng)
    resumed = BatchStream(ds, batch, seed=4, data_cfg=cfg)
    resumed.load_state_dict({"epoch": 0, "index": 1})
    torch.manual_seed(123)  # whatever the process RNG holds at the resume
    assert_same_batches(take(resumed, per_epoch + 1), unbroken[1:])
    # Two processes see the halves of the same augmented global batches.
    halves = [take(BatchStream(ds, batch, seed=4, rank=r, world=2, data_cfg=cfg), per_epoch) for r in range(2)]
    for k, (x, y) in enumerate(unbroken[:per_epoch]):
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), x), k


def test_worker_augmentation_is_random_per_item_and_epoch(disk_roots):
    cfg = disk_cfg(disk_roots, "imagefolder")
    ds = build_dataset(cfg, "train")
    plain = build_dataset(DataConfig(name="imagefolder", root=disk_roots["imagefolder"], resolution=16,
                                     augment=False), "train")
    stream = BatchStream(ds, 2, seed=0, data_cfg=cfg)
    flips = {i: [] for i in range(len(ds))}
    batches = take(stream, 4 * stream.batches_per_epoch)
    for epoch in range(4):
        order = stream.permutation(epoch)
        for b in range(stream.batches_per_epoch):
            x = batches[epoch * stream.batches_per_epoch + b][0]
            for j, i in enumerate(order[2 * b:2 * b + 2].tolist()):
                ref = plain[i][0]
                assert torch.equal(x[j], ref) or torch.equal(x[j], ref.flip(-1))
                flips[i].append(not torch.equal(x[j], ref))
    every = [f for fs in flips.values() for f in fs]
    assert any(every) and not all(every)
    assert any(len(set(fs)) == 2 for fs in flips.values())  # one image, flipped in some epochs only


class _WhoDecodes(torch.utils.data.Dataset):
    """A disk-like dataset whose label is the id of the process that decoded the item."""
    in_memory = False

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), os.getpid()


def test_the_same_workers_decode_every_epoch(disk_roots):
    """The loader is built once: a new epoch resets its workers (new order), it does not
    fork new ones (each start costs time at every epoch boundary)."""
    stream = BatchStream(_WhoDecodes(), 2, seed=0, data_cfg=disk_cfg(disk_roots, "imagefolder"))
    batches = take(stream, 3 * stream.batches_per_epoch)  # 3 epochs of 4 batches
    pids = {pid for _, y in batches for pid in y.tolist()}
    assert len(pids) == 2 and os.getpid() not in pids  # the 2 workers of the first epoch, throughout
    for epoch in range(3):  # and each epoch in its own order
        items = torch.cat([x[:, 0, 0, 0] for x, _ in batches[4 * epoch:4 * epoch + 4]]).long()
        assert torch.equal(items, stream.permutation(epoch))


# ---------------------------------------------------------------------------- the trainer


def test_trainer_resumed_on_workers_equals_unbroken(disk_roots, tmp_path, cpu_only):
    """STL-10 (random crops and flips) on 2 workers, resumed mid-epoch; the image folder's
    stream is checked above."""
    name = "stl10"
    common = ["data.name=" + name, f"data.root={disk_roots[name]}", "data.resolution=8", "data.augment=true",
              "data.num_workers=2", "model.width=4", "model.out_dim=3", "objective.prior.hidden=[16]",
              "train.batch_size=2", "train.phases=[[discriminator, 1], [encoder, 1]]", "train.log_every=1",
              "train.sample_every=100", "train.checkpoint_every=2"]

    def state(run_dir):
        saved, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
        return {k: saved[k] for k in ("step", "nets", "optimizers", "data")}

    train(tiny("prior_match_digits", tmp_path / "once", *common, "train.steps=5"))
    train(tiny("prior_match_digits", tmp_path / "twice", *common, "train.steps=2"))
    assert 0 < state(tmp_path / "twice")["data"]["position"] < 10  # 10 images, 2 a batch: the resume is mid-epoch
    train(tiny("prior_match_digits", tmp_path / "twice", *common, "train.steps=5", "run.resume=latest"))
    assert_same_state(state(tmp_path / "once"), state(tmp_path / "twice"))


class _Drawing(_WhoDecodes):
    """Its 'augmentation' draws from Python's and NumPy's generators, not torch's."""

    def __getitem__(self, i):
        import random

        import numpy as np
        return torch.tensor([float(i), random.random(), float(np.random.rand())]), 0


def test_python_and_numpy_draws_are_seeded_per_item_too(disk_roots):
    """A resumed stream (new workers) gives the same draws as the unbroken one, and the
    process's own Python / NumPy state is untouched."""
    import random

    import numpy as np
    cfg = disk_cfg(disk_roots, "imagefolder")
    before = (random.getstate(), np.random.get_state()[1].copy())
    unbroken = take(BatchStream(_Drawing(), 2, seed=3, data_cfg=cfg), 6)  # 1.5 epochs of 4 batches
    resumed = BatchStream(_Drawing(), 2, seed=3, data_cfg=cfg)
    resumed.load_state_dict({"epoch": 0, "index": 3})
    assert_same_batches(take(resumed, 3), unbroken[3:])
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    in_process = BatchStream(_Drawing(), 2, seed=3, data_cfg=DataConfig(name="imagefolder", num_workers=0))
    assert_same_batches(take(in_process, 6), unbroken)  # workers or not, the same draws
