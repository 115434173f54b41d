"""Datasets: every loader on a tiny fixture in its real format, agreement with torchvision, errors."""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from arena.data import (DATASETS, DataConfig, build_dataset, dataset_signature, lmdb_keys, lsun, make_loader_kwargs,
                        to_float)
from arena.registry import ConfigError
from tests import fixtures

FIXTURES = {
    "cifar10": fixtures.make_cifar10,
    "cifar100": fixtures.make_cifar100,
    "stl10": fixtures.make_stl10,
    "celeba": fixtures.make_celeba,
    "lsun": fixtures.make_lsun,
    "tinyimagenet": fixtures.make_tinyimagenet,
    "imagefolder": fixtures.make_imagefolder,
}


try:
    import lmdb  # noqa: F401
    HAVE_LMDB = True
except ImportError:  # the `lsun` extra is optional: its tests skip, the others run
    HAVE_LMDB = False
needs_lmdb = pytest.mark.skipif(not HAVE_LMDB, reason="the lsun extra (lmdb) is not installed")


def with_lsun_marked(names):
    return [pytest.param(n, marks=needs_lmdb) if n == "lsun" else n for n in names]


@pytest.fixture(autouse=True, scope="module")
def lsun_key_cache(tmp_path_factory):
    """LSUN's key lists go to a fresh private folder, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("lsun-keys") / "cache"
        mp.setenv(lmdb_keys.CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def roots(lsun_key_cache, tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """One fixture folder per dataset, shared by the tests of this module (read-only use);
    no LSUN folder without lmdb, which writes it."""
    out = {}
    for name, make in FIXTURES.items():
        if name == "lsun" and not HAVE_LMDB:
            continue
        root = tmp_path_factory.mktemp(name)
        out[name] = (str(root), make(root))
    return out


def cfg_for(roots, name: str, **kw) -> DataConfig:
    return DataConfig(name=name, root=roots[name][0] if name in roots else "unused", **kw)


def check_item(ds, i: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ds[i]
    assert x.dtype == torch.float32 and x.shape == (ds.channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert y.dtype == torch.long
    if ds.multilabel:
        assert y.shape == (ds.num_classes,) and set(y.tolist()) <= {0, 1}
    else:
        assert y.shape == () and -1 <= int(y) < max(ds.num_classes, 1)
    return x, y


def test_registry_lists_every_dataset():
    assert DATASETS.names() == sorted(["cifar10", "cifar100", "stl10", "celeba", "lsun", "tinyimagenet",
                                       "imagefolder", "digits", "shapes"])


@pytest.mark.parametrize("name", with_lsun_marked(sorted(FIXTURES)) + ["digits", "shapes"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_dataset_loads(roots, name, split):
    resolution = 16
    ds = build_dataset(cfg_for(roots, name, resolution=resolution, num_images=40), split)
    if name in roots:
        assert len(ds) == roots[name][1][split]
    assert ds.channels == (1 if name == "digits" else 3)
    assert ds.resolution == resolution and ds.split == split
    for i in range(min(len(ds), 6)):
        check_item(ds, i, resolution)
    assert ds.in_memory == (name in ("cifar10", "cifar100", "digits", "shapes"))
    assert ds.describe().startswith(f"{name} {split}: {len(ds)} images, {ds.channels}x16x16")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "digits", "shapes"])
def test_in_memory_items_equal_stored_tensors(roots, name):
    ds = build_dataset(cfg_for(roots, name, resolution=24, num_images=20), "train")
    assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (ds.channels, 24, 24)
    assert len(ds.labels) == len(ds.images) == len(ds)
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.equal(x, ds.images[i].float() / 127.5 - 1) and torch.equal(y, ds.labels[i])
    assert torch.equal(to_float(ds.images), torch.stack([ds[i][0] for i in range(len(ds))]))


def test_to_float_endpoints():
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_agrees_with_torchvision(roots, name, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fixture bytes != real md5s
    tv_class = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    for split in ("train", "test"):
        ds = build_dataset(cfg_for(roots, name), split)
        ref = tv_class(roots[name][0], train=split == "train")
        assert torch.equal(ds.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert ds.labels.tolist() == list(ref.targets)
        assert ds.class_names == ref.classes


def test_cifar_resizes_to_resolution(roots):
    ds = build_dataset(cfg_for(roots, "cifar10", resolution=64), "test")
    assert ds.images.shape == (6, 3, 64, 64)


def test_stl10_agrees_with_torchvision(roots, monkeypatch):
    import torchvision.datasets.stl10 as tv_stl

    monkeypatch.setattr(tv_stl, "check_integrity", lambda *a, **k: True)  # fixture bytes != real md5s
    for split, tv_split in [("train", "train+unlabeled"), ("test", "test")]:
        ds = build_dataset(cfg_for(roots, "stl10", resolution=64, augment=False), split)
        ref = tv_stl.STL10(roots["stl10"][0], split=tv_split)
        assert len(ds) == len(ref) and ds.labels.tolist() == ref.labels.tolist()
        center = torch.from_numpy(ref.data[:, :, 16:80, 16:80])  # the 64x64 center crop
        for i in range(len(ds)):
            x, y = ds[i]
            assert torch.equal(x, to_float(center[i])) and int(y) == ref.labels[i]
    train = build_dataset(cfg_for(roots, "stl10"), "train")
    assert not train.in_memory and train.num_classes == 10
    assert (train.labels[:4] >= 0).all() and (train.labels[4:] == -1).all()
    assert "6 unlabeled (label -1)" in train.describe()
    labeled = build_dataset(cfg_for(roots, "stl10", labeled_only=True), "train")
    assert len(labeled) == 4 and (labeled.labels >= 0).all()


def test_stl10_augment_is_a_random_crop_and_flip(roots, monkeypatch):
    import torchvision.datasets.stl10 as tv_stl

    monkeypatch.setattr(tv_stl, "check_integrity", lambda *a, **k: True)
    full = to_float(torch.from_numpy(tv_stl.STL10(roots["stl10"][0], split="train").data[0]))
    ds = build_dataset(cfg_for(roots, "stl10", resolution=64), "train")  # augment defaults on for train
    assert ds.augment and not build_dataset(cfg_for(roots, "stl10", resolution=64), "test").augment
    torch.manual_seed(0)
    windows = full.unfold(1, 64, 1).unfold(2, 64, 1)  # [3, 33, 33, 64, 64]: every 64x64 crop
    seen = set()
    for _ in range(8):
        x = ds[0][0]
        found = [(flip, t, l) for flip in (False, True) for t in range(33) for l in range(33)
                 if torch.equal(windows[:, t, l].flip(-1) if flip else windows[:, t, l], x)]
        assert found, "augmented item is not a (flipped) 64x64 crop of the image"
        seen.add(found[0])
    assert len(seen) > 1
    assert build_dataset(cfg_for(roots, "stl10", resolution=32), "train")[0][0].shape == (3, 32, 32)


def test_celeba_attributes_are_multilabel(roots):
    ds = build_dataset(cfg_for(roots, "celeba", resolution=32), "train")
    assert ds.multilabel and ds.num_classes == 40 and ds.class_names == fixtures.CELEBA_ATTRIBUTES
    assert ds.labels.shape == (6, 40)
    for k in range(6):  # train = partition 0 = images 000001..000006
        assert ds.labels[k].tolist() == [fixtures.celeba_attribute(k + 1, a) for a in range(40)]
    test = build_dataset(cfg_for(roots, "celeba", resolution=32), "test")
    assert [f.name for f in test.files] == ["000009.jpg", "000010.jpg"]
    assert "40 binary attributes" in test.describe()


@needs_lmdb
def test_lsun_labels_categories_and_writes_nothing_beside_the_data(tmp_path, monkeypatch):
    for c in ("bedroom", "tower"):
        fixtures.make_lsun(tmp_path / "lsun", c)
    before = sorted(os.listdir(tmp_path / "lsun"))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(tmp_path / "keys"))
    cfg = DataConfig(name="lsun", root=str(tmp_path / "lsun"), categories=["bedroom", "tower"], resolution=16)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 10 and ds.labels.tolist() == [0] * 5 + [1] * 5 and ds.num_classes == 2
    assert ds.class_names == ["bedroom", "tower"]
    assert check_item(ds, 7, 16)[1] == 1
    assert build_dataset(cfg, "test").labels.tolist() == [0] * 3 + [1] * 3
    assert os.listdir(workdir) == [] and os.getcwd() == str(workdir)
    assert sorted(os.listdir(tmp_path / "lsun")) == before
    cache = lmdb_keys.cache_dir()
    assert len(list(cache.glob("*.keys"))) == 4 and (cache.stat().st_mode & 0o777) == 0o700


@needs_lmdb
def test_lsun_rebuilds_a_stale_key_cache(tmp_path):
    import lmdb

    counts = fixtures.make_lsun(tmp_path, "church_outdoor")
    cfg = DataConfig(name="lsun", root=str(tmp_path), categories=["church_outdoor"], resolution=16)
    first = build_dataset(cfg, "train")
    keys = list(first._locate(0)[0].keys)
    (cache,) = [p for p in lmdb_keys.cache_dir().glob("church_outdoor_train_lmdb-*.keys")]
    assert cache.read_text().splitlines()[1:] == [k.hex() for k in keys]
    lsun._lsun_dbs.clear()  # as a new process: the database changes on disk, then is read again
    env = lmdb.open(str(tmp_path / "church_outdoor_train_lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"0-new-key-first", txn.get(keys[0]))
    env.close()
    ds = build_dataset(cfg, "train")
    assert len(ds) == counts["train"] + 1 and ds._locate(0)[0].keys[0] == b"0-new-key-first"
    assert len(cache.read_text().splitlines()) == counts["train"] + 2  # header + keys


@needs_lmdb
def test_lsun_reads_in_dataloader_workers(roots):
    ds = build_dataset(cfg_for(roots, "lsun", resolution=16), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    (x, y), = list(loader)
    assert x.shape == (5, 3, 16, 16) and torch.equal(x, torch.stack([ds[i][0] for i in range(5)]))


def test_lsun_without_lmdb_package_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "bedroom_train_lmdb").mkdir()  # where the database would be; lmdb is needed to read it
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` raise ImportError
    with pytest.raises(ConfigError, match="'lmdb' package"):
        build_dataset(DataConfig(name="lsun", root=str(tmp_path)), "train")


def test_tinyimagenet_root_may_be_parent_or_dataset_folder(roots):
    root = roots["tinyimagenet"][0]
    a = build_dataset(DataConfig(name="tinyimagenet", root=root, resolution=64), "test")
    b = build_dataset(DataConfig(name="tinyimagenet", root=os.path.join(root, "tiny-imagenet-200"),
                                 resolution=64), "test")
    assert [str(f) for f in a.files] == [str(f) for f in b.files]
    wnids = sorted(fixtures.TINY_WNIDS)  # class index = position in sorted wnids
    assert a.class_names == wnids and a.num_classes == 3
    assert a.labels.tolist() == [wnids.index(fixtures.TINY_WNIDS[k % 3]) for k in range(6)]
    train = build_dataset(DataConfig(name="tinyimagenet", root=root, resolution=64), "train")
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x, _ = check_item(train, 0, 64)  # a grayscale source image comes out as 3 equal channels
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_imagefolder_classes_come_from_train(roots):
    cfg = cfg_for(roots, "imagefolder", resolution=16)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_names == test.class_names == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1]
    assert not any(f.suffix == ".txt" for f in train.files)


def test_imagefolder_test_class_missing_from_train_is_an_error(tmp_path):
    fixtures.make_imagefolder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(ConfigError, match="classes not in .*train: bird"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), "test")


def test_digits_split_is_deterministic_and_stratified():
    cfg = DataConfig(name="digits", resolution=8)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) + len(test) == 1797 and train.channels == 1 and train.num_classes == 10
    again = build_dataset(cfg, "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    train_counts = torch.bincount(train.labels, minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10)
    share = test_counts.float() / (train_counts + test_counts).float()
    assert (share - cfg.test_fraction).abs().max() < 0.02  # every class split in the same proportion
    other = build_dataset(replace(cfg, split_seed=1), "test")
    assert not torch.equal(other.images, test.images)
    # 8x8 digits at resolution 8 are the sklearn values 0..16 scaled to 0..255
    from sklearn.datasets import load_digits
    ref = np.round(load_digits().images * 255 / 16)
    assert any(np.array_equal(ref[k], test.images[0, 0].numpy()) for k in range(len(ref)))


def test_shapes_are_deterministic_per_seed():
    cfg = DataConfig(name="shapes", resolution=32)
    train = build_dataset(cfg, "train")
    assert len(train) == 4096 and len(build_dataset(cfg, "test")) == 1024
    small = replace(cfg, num_images=64)
    a, b = build_dataset(small, "train"), build_dataset(small, "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.images, train.images[:64])  # draws do not depend on the count beyond n
    assert not torch.equal(build_dataset(small, "test").images, a.images[:16])
    assert not torch.equal(build_dataset(replace(small, split_seed=3), "train").images, a.images)
    assert set(train.labels.tolist()) == {0, 1, 2, 3}
    assert build_dataset(replace(small, resolution=48), "train").images.shape == (64, 3, 48, 48)


# ---------------------------------------------------------------------------- errors


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"data.name: .*'cifar'.*did you mean 'cifar10'"):
        build_dataset(DataConfig(name="cifar"), "train")


@pytest.mark.parametrize("name,expected", [
    ("cifar10", "cifar-10-batches-py not found; expected CIFAR-10's python batches"),
    ("cifar100", "cifar-100-python not found; expected CIFAR-100"),
    ("stl10", "stl10_binary not found; expected STL-10's binary files"),
    ("celeba", "celeba not found; expected the aligned CelebA folder"),
    pytest.param("lsun", "bedroom_train_lmdb not found; expected LSUN's lmdb database", marks=needs_lmdb),
    ("tinyimagenet", "tiny-imagenet-200 not found; expected Tiny ImageNet"),
    ("imagefolder", "train not found; expected an image folder"),
])
def test_missing_root_names_path_and_contents(tmp_path, name, expected):
    root = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        build_dataset(DataConfig(name=name, root=str(root)), "train")
    message = str(err.value)
    assert message.startswith(f"data.root: {root}") and expected in message
    assert ("data.download: true" in message) == (name in ("cifar10", "cifar100", "stl10"))


def test_missing_file_inside_dataset_folder_is_named(tmp_path):
    fixtures.make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ConfigError, match="cifar-10-batches-py/test_batch not found"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "test")


@pytest.mark.parametrize("change,match", [
    ({"resolution": 4}, "data.resolution must be an integer >= 8"),
    ({"resolution": 32.0}, "data.resolution must be an integer >= 8"),
    ({"resolution": True}, "data.resolution"),
    ({"num_workers": -2}, "data.num_workers"),
    ({"test_fraction": 1.0}, "data.test_fraction"),
    ({"num_images": -1}, "data.num_images"),
    ({"name": "lsun", "categories": []}, "data.categories must be a non-empty list"),
    ({"name": "lsun", "categories": ["bedrom"]}, "did you mean 'bedroom'"),
    ({"augment": True}, "data.augment"),  # digits is in memory: no augmentation
])
def test_bad_options_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        build_dataset(replace(DataConfig(), **change), "train")


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="split must be one of train, test"):
        build_dataset(DataConfig(), "val")


def corrupt(path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


@pytest.mark.parametrize("name,victim", [
    ("imagefolder", "train/cat/b.jpg"),
    ("celeba", "celeba/img_align_celeba/000002.jpg"),
    ("tinyimagenet", "tiny-imagenet-200/train/n01443537/images/n01443537_1.JPEG"),
])
def test_unreadable_image_is_named_or_skipped(tmp_path, name, victim):
    FIXTURES[name](tmp_path)
    corrupt(tmp_path / victim)
    cfg = DataConfig(name=name, root=str(tmp_path), resolution=16)
    ds = build_dataset(cfg, "train")
    bad = next(i for i, f in enumerate(ds.files) if str(f).endswith(victim))
    with pytest.raises(ConfigError, match=f"unreadable image .*{victim}.*data.skip_bad_files"):
        ds[bad]
    skipping = build_dataset(replace(cfg, skip_bad_files=True), "train")
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        items = [skipping[i] for i in range(len(skipping))] + [skipping[bad]]
    assert len(record) == 1  # warned once per file
    assert skipping.bad_files == {str(tmp_path / victim)}
    x, y = items[bad]  # replaced by the next image, with that image's label
    assert torch.equal(x, items[bad + 1][0]) and torch.equal(y, skipping.labels[bad + 1])


@needs_lmdb
def test_unreadable_lsun_value_is_named(tmp_path):
    import lmdb

    fixtures.make_lsun(tmp_path, "bedroom")
    env = lmdb.open(str(tmp_path / "bedroom_val_lmdb"))
    with env.begin(write=True) as txn:
        key = next(iter(txn.cursor().iternext(keys=True, values=False)))
        txn.put(key, b"garbage")
    env.close()
    cfg = DataConfig(name="lsun", root=str(tmp_path), resolution=16)
    with pytest.raises(ConfigError, match=f"unreadable image .*bedroom_val_lmdb key {key.decode()}"):
        build_dataset(cfg, "test")[0]
    skipping = build_dataset(replace(cfg, skip_bad_files=True), "test")
    with pytest.warns(UserWarning):
        assert skipping[0][0].shape == (3, 16, 16)
    assert len(skipping.bad_files) == 1


# ---------------------------------------------------------------------------- helpers


def test_loader_kwargs(roots):
    memory = build_dataset(DataConfig(name="shapes", num_images=8), "train")
    disk = build_dataset(cfg_for(roots, "imagefolder"), "train")
    assert make_loader_kwargs(memory, DataConfig(num_workers=3))["num_workers"] == 0
    kw = make_loader_kwargs(disk, DataConfig(num_workers=2))
    assert kw == {"num_workers": 2, "pin_memory": torch.cuda.is_available(), "persistent_workers": True}
    assert not make_loader_kwargs(disk, DataConfig(num_workers=2), "cpu")["pin_memory"]  # a CPU run pins nothing
    assert make_loader_kwargs(disk, DataConfig(num_workers=2), torch.device("cuda", 1))["pin_memory"]
    auto = make_loader_kwargs(disk, DataConfig())
    assert 0 <= auto["num_workers"] <= 4 and auto["persistent_workers"] == (auto["num_workers"] > 0)
    if len(os.sched_getaffinity(0)) <= 2:
        assert auto["num_workers"] == 0


def test_dataset_signature(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(name="cifar10", root="data", augment=True, num_workers=3, skip_bad_files=True)
    sig = dataset_signature(cfg, "train")
    assert sig["root"] == str(tmp_path / "data") and sig["augment"] is False and sig["split"] == "train"
    assert sig == dataset_signature(replace(cfg, augment=None, num_workers=0, download=True), "train")
    assert sig != dataset_signature(replace(cfg, resolution=64), "train")
    assert sig != dataset_signature(cfg, "test")
    shapes = dataset_signature(DataConfig(name="shapes"), "train")
    assert shapes["root"] is None and shapes["num_images"] == 4096
    assert shapes == dataset_signature(DataConfig(name="shapes", root="elsewhere", num_images=4096), "train")
    assert set(sig) == {"name", "root", "resolution", "categories", "split", "num_images", "test_fraction",
                        "split_seed", "augment"}
