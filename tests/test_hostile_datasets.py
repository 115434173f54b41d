"""Dataset folders as a hostile but fair user could hand them over: crafted pickles, planted
caches, symbolic links and loops, FIFOs, truncated and malformed files. Nothing runs code,
every folder read ends, every image counts once, every fault is a message naming the file."""
from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import signal
import string
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_cli
from arena.data import DataConfig, build_dataset, lmdb_keys, lsun
from arena.registry import ConfigError
from tests import fixtures

try:
    import lmdb  # noqa: F401
    HAVE_LMDB = True
except ImportError:
    HAVE_LMDB = False
needs_lmdb = pytest.mark.skipif(not HAVE_LMDB, reason="the lsun extra (lmdb) is not installed")


class Payload:
    """Unpickling this object calls func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- CIFAR


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle wrote CIFAR's batches (protocol 2): str as 8-bit strings,
    numpy uint8 arrays as numpy.core.multiarray._reconstruct plus a state holding the raw bytes."""
    out = [b"\x80\x02"]

    def string(b: bytes):
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b)

    def put(x):
        if isinstance(x, dict):
            out.append(b"}(")
            for k, v in x.items():
                put(k)
                put(v)
            out.append(b"u")
        elif isinstance(x, list):
            out.append(b"](")
            for v in x:
                put(v)
            out.append(b"e")
        elif isinstance(x, str):
            string(x.encode("latin1"))
        elif isinstance(x, int):
            out.append(b"J" + struct.pack("<i", x))
        else:  # a uint8 ndarray: _reconstruct(ndarray, (0,), 'b'), then (1, shape, dtype, False, bytes)
            assert isinstance(x, np.ndarray) and x.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            string(b"b")
            out.append(b"\x87R(K\x01(" + b"".join(b"J" + struct.pack("<i", n) for n in x.shape) + b"t")
            out.append(b"cnumpy\ndtype\n")
            string(b"u1")
            out.append(b"K\x00K\x01\x87R(K\x03")
            string(b"|")
            out.append(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(x.tobytes())
            out.append(b"tb")

    put(obj)
    return b"".join(out) + b"."


def cifar10_root(tmp_path: Path) -> Path:
    fixtures.make_cifar10(tmp_path)
    return tmp_path / "cifar-10-batches-py"


def test_python2_cifar_batches_load_as_written(tmp_path):
    folder = cifar10_root(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(py2_pickle({"batch_label": "testing batch 1 of 1", "labels": [3, 0, 9],
                                                    "data": data, "filenames": ["a.png", "b.png", "c.png"]}))
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": [f"c{k}" for k in range(10)],
                                                      "num_vis": 3072}))
    ds = build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "test")
    assert torch.equal(ds.images, torch.from_numpy(data.reshape(3, 3, 32, 32)))
    assert ds.labels.tolist() == [3, 0, 9] and ds.class_names == [f"c{k}" for k in range(10)]
    # the same bytes through Python's own unpickler (trusted here) agree
    assert np.array_equal(pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")["data"], data)


def test_cifar_batches_resaved_by_python3_load(tmp_path):
    folder = cifar10_root(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) % 256
    for protocol in (2, 4, 5):
        entry = {b"data": data.astype(np.uint8), b"labels": np.array([1, 2]), b"batch_label": b"x"}
        (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
        ds = build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "test")
        assert ds.labels.tolist() == [1, 2] and torch.equal(ds.images.flatten(1), torch.from_numpy(data).byte())


@pytest.mark.parametrize("payload", ["system", "exec", "open", "ndarray_call"])
def test_a_crafted_cifar_batch_is_refused_and_never_runs(tmp_path, payload):
    folder = cifar10_root(tmp_path)
    marker = tmp_path / "ran"
    victim = folder / "data_batch_3"
    if payload == "ndarray_call":  # numpy.ndarray((10**12,)): a terabyte from a few bytes
        victim.write_bytes(b"\x80\x02cnumpy\nndarray\n\x8a\x05" + (10**12).to_bytes(5, "little") + b"\x85\x85R.")
    else:
        call = {"system": Payload(os.system, f"touch {marker}"),
                "exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
                "open": Payload(open, str(marker), "w")}[payload]
        victim.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0],
                                         "batch_label": call}, protocol=2))
    with pytest.raises(ConfigError) as err:
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "train")
    assert str(err.value).startswith(f"data.root: {victim} ")
    if payload != "ndarray_call":
        assert "refused to load it" in str(err.value)
    assert not marker.exists()


def test_a_crafted_cifar_meta_file_is_refused_and_never_runs(tmp_path):
    fixtures.make_cifar100(tmp_path)
    marker, meta = tmp_path / "ran", tmp_path / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({"fine_label_names": Payload(open, str(marker), "w")}, protocol=4))
    with pytest.raises(ConfigError, match=f"^data.root: {meta} refers to the Python object (io|builtins).open"):
        build_dataset(DataConfig(name="cifar100", root=str(tmp_path)), "test")
    assert not marker.exists()


def test_training_on_a_crafted_cifar_batch_stops_with_one_line(tmp_path, capsys):
    folder = cifar10_root(tmp_path / "data")
    marker = tmp_path / "ran"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Payload(os.system, f"touch {marker}")}))
    code = train_cli.main(["--config", "dim_l_nce_cifar10", f"data.root={tmp_path / 'data'}", "train.steps=1",
                           f"run.dir={tmp_path / 'run'}", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert err.startswith(f"error: data.root: {folder / 'data_batch_1'} refers to the Python object posix.system")
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_a_truncated_cifar_batch_is_named(tmp_path, keep):
    folder = cifar10_root(tmp_path)
    victim = folder / "data_batch_2"
    raw = victim.read_bytes()
    victim.write_bytes(raw[:int(len(raw) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ConfigError, match=rf"^data.root: {victim} .*(truncated|damaged)"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "train")


@pytest.mark.parametrize("entry,match", [
    ([1, 2, 3], "holds a list, not CIFAR's dict"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "has no 'labels' entry"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, r"'data' is uint8 \[2, 1024\]"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one integer class per image"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "classes outside 0..9"),
    ({"data": np.full((1, 3072), 300, np.int64), "labels": [0]}, "values outside 0..255"),
    ({"data": "pixels", "labels": [0]}, "'data' is str"),
])
def test_a_cifar_batch_of_the_wrong_shape_is_named(tmp_path, entry, match):
    victim = cifar10_root(tmp_path) / "test_batch"
    victim.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ConfigError, match=rf"^data.root: {victim}.* {match}"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "test")


# ---------------------------------------------------------------------------- LSUN


def torchvision_cache_name(path: Path) -> str:
    return "_cache_" + "".join(c for c in str(path) if c in string.ascii_letters)


@needs_lmdb
def test_a_planted_torchvision_lsun_cache_never_runs(tmp_path, monkeypatch):
    counts = fixtures.make_lsun(tmp_path / "lsun", "bedroom")
    marker = tmp_path / "ran"
    planted = pickle.dumps(Payload(open, str(marker), "w"))
    workdir, shared_tmp = tmp_path / "cwd", tmp_path / "shared-tmp"
    workdir.mkdir()
    shared_tmp.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))  # where torchvision's cache went for read-only data
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(tmp_path / "keys"))
    for split in ("train", "val"):
        name = torchvision_cache_name(tmp_path / "lsun" / f"bedroom_{split}_lmdb")
        for folder in (workdir, tmp_path / "lsun", shared_tmp):
            (folder / name).write_bytes(planted)
    for split in ("train", "test"):
        ds = build_dataset(DataConfig(name="lsun", root=str(tmp_path / "lsun"), resolution=16), split)
        assert len(ds) == counts[split] and all(ds[i][0].shape == (3, 16, 16) for i in range(len(ds)))
    assert not marker.exists()


@needs_lmdb
def test_a_key_cache_others_can_write_is_not_used(tmp_path, monkeypatch):
    counts = fixtures.make_lsun(tmp_path, "bedroom")
    cfg = DataConfig(name="lsun", root=str(tmp_path), resolution=16)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(shared))
    lsun._lsun_dbs.clear()
    with pytest.warns(UserWarning, match=f"LSUN key cache {shared} is not used"):
        assert len(build_dataset(cfg, "train")) == counts["train"]
    assert os.listdir(shared) == []
    # In the user's own folder, a cache file others may write is ignored and rewritten;
    # a damaged one (a pickle, wrong keys) is rebuilt.
    private = tmp_path / "private"
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(private))
    lsun._lsun_dbs.clear()
    keys = list(build_dataset(cfg, "train")._locate(0)[0].keys)
    (cache,) = private.glob("bedroom_train_lmdb-*.keys")
    header = cache.read_text().splitlines()[0]
    for planted, mode in [(header + "\n" + "00\n" * len(keys), 0o666), (pickle.dumps(keys), 0o600),
                          (header + "\n" + "zz\n" * len(keys), 0o600), (header + "\n", 0o600)]:
        cache.write_bytes(planted.encode() if isinstance(planted, str) else planted)
        cache.chmod(mode)
        lsun._lsun_dbs.clear()
        assert build_dataset(cfg, "train")._locate(0)[0].keys == keys
        assert cache.read_text().splitlines()[1:] == [k.hex() for k in keys]
        assert cache.stat().st_mode & 0o777 == 0o600


@needs_lmdb
def test_lsun_categories_linked_to_one_database_are_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(tmp_path / "keys"))
    fixtures.make_lsun(tmp_path, "bedroom")
    (tmp_path / "tower_train_lmdb").symlink_to(tmp_path / "bedroom_train_lmdb")
    with pytest.raises(ConfigError, match="bedroom_train_lmdb, .*tower_train_lmdb are one database"):
        build_dataset(DataConfig(name="lsun", root=str(tmp_path), categories=["bedroom", "tower"]), "train")


@needs_lmdb
def test_an_lsun_folder_that_is_not_a_database_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(lmdb_keys.CACHE_ENV, str(tmp_path / "keys"))
    (tmp_path / "bedroom_train_lmdb").mkdir()
    (tmp_path / "bedroom_train_lmdb" / "data.mdb").write_bytes(b"not an lmdb file" * 64)
    with pytest.raises(ConfigError, match=f"data.root: {tmp_path / 'bedroom_train_lmdb'} is not a readable lmdb"):
        build_dataset(DataConfig(name="lsun", root=str(tmp_path)), "train")
    (tmp_path / "bedroom_val_lmdb").write_text("a file")
    with pytest.raises(ConfigError, match="bedroom_val_lmdb is a file, not a folder"):
        build_dataset(DataConfig(name="lsun", root=str(tmp_path)), "test")


# ---------------------------------------------------------------------------- links and special files


def png(path: Path, seed: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
    return path


def test_an_image_folder_with_link_loops_ends_and_counts_each_image_once(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    train = root / "train"
    for k, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png", "dog/sub/d.png"]):
        png(train / name, k)
    png(outside / "x.png", 10)
    png(outside / "deeper" / "y.png", 11)
    (train / "cat" / "loop").symlink_to(train)  # a link to the parent: cat/loop/cat/loop/...
    (train / "cat" / "self").symlink_to(train / "cat")
    (train / "cat" / "steal").symlink_to(train / "dog" / "sub")  # dog's images stay dog's
    (train / "dog" / "again.png").symlink_to(train / "cat" / "a.png")  # counted in cat already
    os.link(train / "dog" / "c.png", train / "dog" / "hard.png")  # the same file under two names
    (train / "dog" / "ext").symlink_to(outside)  # outside the root: followed, each image once
    (train / "dog" / "ext_again").symlink_to(outside)
    (train / "dog" / "x_again.png").symlink_to(outside / "x.png")
    (outside / "back").symlink_to(train)  # and from outside back in
    (train / "cat" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(train / "cat" / "fifo.png")  # opening it would block forever
    (root / "test").symlink_to(train)
    with deadline(20):
        ds = build_dataset(DataConfig(name="imagefolder", root=str(root), resolution=8), "train")
        test = build_dataset(DataConfig(name="imagefolder", root=str(root), resolution=8), "test")
    real = [os.path.realpath(f) for f in ds.files]
    assert len(set(real)) == len(real) == 7
    by_class = {c: sorted(Path(r).name for r, y in zip(real, ds.labels.tolist()) if ds.class_names[y] == c)
                for c in ds.class_names}
    assert by_class == {"cat": ["a.png", "b.png", "nowhere.png"], "dog": ["c.png", "d.png", "x.png", "y.png"]}
    assert [str(f) for f in test.files] == [str(f).replace("/train/", "/test/") for f in ds.files]
    broken = [str(f) for f in ds.files].index(str(train / "cat" / "broken.png"))
    with pytest.raises(ConfigError, match=f"unreadable image {train / 'cat' / 'broken.png'}"):
        ds[broken]
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)) if i != broken)


def test_class_folders_that_are_links_count_each_image_once(tmp_path):
    elsewhere = tmp_path / "cats"
    png(elsewhere / "a.png", 0)
    png(tmp_path / "root" / "train" / "dog" / "b.png", 1)
    (tmp_path / "root" / "train" / "cat").symlink_to(elsewhere)  # a class kept on another disk
    (tmp_path / "root" / "train" / "kitty").symlink_to(elsewhere)  # the same folder again: no images of its own
    (tmp_path / "root" / "train" / "loop").symlink_to(tmp_path / "root" / "train" / "loop")
    with pytest.raises(ConfigError, match=r"class folder\(s\) without images .*: kitty;"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "root")), "train")
    (tmp_path / "root" / "train" / "kitty").unlink()
    ds = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "root")), "train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2


def test_tinyimagenet_counts_a_linked_image_once(tmp_path):
    fixtures.make_tinyimagenet(tmp_path)
    base = tmp_path / "tiny-imagenet-200"
    w0, w1 = fixtures.TINY_WNIDS[:2]
    (base / "train" / w1 / "images" / "copy.JPEG").symlink_to(base / "train" / w0 / "images" / f"{w0}_1.JPEG")
    os.mkfifo(base / "train" / w1 / "images" / "fifo.JPEG")
    with deadline(20):
        ds = build_dataset(DataConfig(name="tinyimagenet", root=str(tmp_path)), "train")
    assert len(ds) == 12 and not any(f.name in ("copy.JPEG", "fifo.JPEG") for f in ds.files)


@pytest.mark.parametrize("make,path", [
    (fixtures.make_celeba, "celeba/img_align_celeba"),
    (fixtures.make_stl10, "stl10_binary"),
    (fixtures.make_cifar10, "cifar-10-batches-py"),
])
def test_a_dataset_folder_that_is_a_link_loop_is_named(tmp_path, make, path):
    make(tmp_path)
    folder = tmp_path / path
    os.rename(folder, tmp_path / "moved")
    folder.symlink_to(folder)
    name = {"celeba": "celeba", "stl10_binary": "stl10", "cifar-10-batches-py": "cifar10"}[path.split("/")[0]]
    with pytest.raises(ConfigError, match=f"data.root: {folder} is a symbolic link to .*loop of links"):
        build_dataset(DataConfig(name=name, root=str(tmp_path)), "train")
    folder.unlink()
    folder.symlink_to(tmp_path / "moved")  # a link to the real folder reads as the folder
    assert len(build_dataset(DataConfig(name=name, root=str(tmp_path), resolution=16), "train")) > 0


# ---------------------------------------------------------------------------- malformed files


def test_an_image_folder_whose_train_or_test_is_a_file_is_named(tmp_path):
    fixtures.make_imagefolder(tmp_path)
    test = tmp_path / "test"
    for f in test.rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted(test.rglob("*"), reverse=True):
        d.rmdir()
    test.rmdir()
    test.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"data.root: {test} is a file, not a folder; expected an image folder"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), "test")
    train = tmp_path / "train"
    os.rename(train, tmp_path / "old")
    train.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"data.root: {train} is a file, not a folder"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), "train")


def edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit,match", [
    (lambda line: line.replace(" 1", " 0", 1), "line 5 is not a file name and 40 values -1 or 1"),
    (lambda line: line.replace("-1", "yes", 1), "line 5 is not a file name and 40 values -1 or 1"),
    (lambda line: line.rsplit(" ", 1)[0], "line 5 is not a file name and 40 values -1 or 1"),
    (lambda line: "000002.jpg" + line[10:], "line 5 repeats an image"),
])
def test_celeba_attributes_that_are_not_minus_one_or_one_are_named_by_line(tmp_path, edit, match):
    fixtures.make_celeba(tmp_path)
    attr = tmp_path / "celeba" / "list_attr_celeba.txt"
    edit_line(attr, 5, edit)  # 000003.jpg's row
    with pytest.raises(ConfigError, match=f"data.root: {attr} {match}"):
        build_dataset(DataConfig(name="celeba", root=str(tmp_path)), "train")


def test_celeba_truncated_and_unreadable_lists_are_named(tmp_path):
    fixtures.make_celeba(tmp_path)
    folder = tmp_path / "celeba"
    attr, partition = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
    cfg = DataConfig(name="celeba", root=str(tmp_path))
    full = attr.read_text()
    attr.write_text("\n".join(full.splitlines()[:-3]) + "\n")  # cut off: 7 rows, the count says 10
    with pytest.raises(ConfigError, match=f"{attr} lists 7 images but its first line says 10; .*truncated"):
        build_dataset(cfg, "train")
    attr.write_bytes(b"10\n\xff\xfe not text")
    with pytest.raises(ConfigError, match=f"{attr} is not UTF-8 text"):
        build_dataset(cfg, "train")
    attr.write_text(full)
    edit_line(partition, 2, lambda line: line.replace(" 0", " 7"))
    with pytest.raises(ConfigError, match=f"{partition} line 2 is not '<file> <0|1|2>'"):
        build_dataset(cfg, "train")
    partition.unlink()
    os.mkfifo(partition)  # reading it would block forever
    with deadline(20), pytest.raises(ConfigError, match=f"{partition} is not a regular file"):
        build_dataset(cfg, "train")


def test_tinyimagenet_annotations_without_tabs_are_named_by_line(tmp_path):
    fixtures.make_tinyimagenet(tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    edit_line(annotations, 3, lambda line: line.replace("\t", " "))
    with pytest.raises(ConfigError, match=rf"{annotations} line 3 is not '<file>\\t<wnid>\\t<box>'"):
        build_dataset(DataConfig(name="tinyimagenet", root=str(tmp_path)), "test")


def test_stl10_labels_outside_its_classes_and_empty_files_are_named(tmp_path):
    fixtures.make_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    np.array([1, 2, 11, 3, 4], np.uint8).tofile(folder / "test_y.bin")
    with pytest.raises(ConfigError, match=f"{folder / 'test_y.bin'} has labels outside 1..10"):
        build_dataset(DataConfig(name="stl10", root=str(tmp_path)), "test")
    (folder / "test_X.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=f"{folder / 'test_X.bin'} has 0 bytes, not a positive multiple"):
        build_dataset(DataConfig(name="stl10", root=str(tmp_path)), "test")
    (folder / "class_names.txt").write_text("airplane\nbird\n")
    with pytest.raises(ConfigError, match=f"{folder / 'class_names.txt'} lists 2 class names; STL-10 has 10"):
        build_dataset(DataConfig(name="stl10", root=str(tmp_path)), "train")


def test_a_listed_image_that_is_a_fifo_or_folder_is_named_not_waited_for(tmp_path):
    fixtures.make_celeba(tmp_path)
    images = tmp_path / "celeba" / "img_align_celeba"
    (images / "000002.jpg").unlink()
    os.mkfifo(images / "000002.jpg")  # the list names it; opening it for reading would block forever
    (images / "000003.jpg").unlink()
    (images / "000003.jpg").mkdir()
    ds = build_dataset(DataConfig(name="celeba", root=str(tmp_path), resolution=16), "train")
    for k in (1, 2):
        with deadline(20), pytest.raises(ConfigError, match=rf"unreadable image {images / f'00000{k + 1}.jpg'} "
                                                           r"\(ValueError: not a regular file"):
            ds[k]


# ---------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("name,make", [("cifar10", fixtures.make_cifar10), ("cifar100", fixtures.make_cifar100),
                                       ("stl10", fixtures.make_stl10)])
def test_download_fetches_only_the_archive_and_names_a_failure(tmp_path, monkeypatch, name, make):
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tv_utils

    cfg = DataConfig(name=name, root=str(tmp_path), download=True, resolution=16)
    with pytest.raises(ConfigError, match=rf"^data.download: could not fetch {name} from https?://.* into {tmp_path} "
                                          r"\(URLError: .*\); put its files there by hand"):
        build_dataset(cfg, "train")  # the tests run offline: the fetch fails
    fetched = []

    def fake_fetch(url, root, filename, md5):  # what the archive unpacks to
        fetched.append(filename)
        make(root)

    def unpickling_class(*args, **kwargs):
        raise AssertionError("torchvision's dataset class would read (unpickle) the files")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_fetch)
    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.STL10):
        monkeypatch.setattr(cls, "__init__", unpickling_class)
    assert len(build_dataset(cfg, "train")) > 0 and len(fetched) == 1
    assert len(build_dataset(cfg, "test")) > 0 and len(fetched) == 1  # the files are there: nothing fetched


def test_a_file_that_is_no_image_is_named_once_in_the_message(tmp_path):
    fixtures.make_imagefolder(tmp_path)
    victim = tmp_path / "train" / "cat" / "a.png"
    victim.write_text("hello, not an image")
    ds = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), "train")
    with pytest.raises(ConfigError) as err:
        ds[[str(f) for f in ds.files].index(str(victim))]
    assert str(err.value).startswith(f"unreadable image {victim} (UnidentifiedImageError: cannot identify image file: "
                                     f"not an image format PIL reads); fix or remove it")


def test_unreadable_dataset_folders_and_files_are_named(tmp_path, monkeypatch):
    """No permission (simulated: the tests may run as root, whom permissions do not stop)."""
    fixtures.make_imagefolder(tmp_path / "folder")
    fixtures.make_stl10(tmp_path / "stl")
    denied = {tmp_path / "folder" / "train", tmp_path / "stl" / "stl10_binary" / "test_y.bin"}
    real_iterdir, real_read_bytes = Path.iterdir, Path.read_bytes

    def refuse(real):
        def call(self, *args):
            if self in denied:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args)
        return call

    monkeypatch.setattr(Path, "iterdir", refuse(real_iterdir))
    monkeypatch.setattr(Path, "read_bytes", refuse(real_read_bytes))
    with pytest.raises(ConfigError, match=f"data.root: {tmp_path / 'folder' / 'train'} could not be read "
                                          r"\(Permission denied\)"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "folder")), "train")
    with pytest.raises(ConfigError, match=f"data.root: {tmp_path / 'stl' / 'stl10_binary' / 'test_y.bin'} could "
                                          r"not be read \(Permission denied\)"):
        build_dataset(DataConfig(name="stl10", root=str(tmp_path / "stl")), "test")
