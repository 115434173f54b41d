"""Image files as users have them: 16-bit PNGs, empty class folders, bad files read by workers."""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import train as train_cli
from arena.data import DataConfig, NamedErrors, build_dataset, to_float
from arena.registry import ConfigError
from arena.stream import BatchStream
from tests import fixtures


def folder(root, layout: dict[str, dict[str, Image.Image]]):
    """root/train/<class>/<name> = image, and a test split equal to train."""
    for split in ("train", "test"):
        for cls, files in layout.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for name, img in files.items():
                img.save(root / split / cls / name)
    return root


def gray8(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8), "L")


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    v = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    img16 = Image.fromarray(v)
    assert img16.mode == "I;16"  # what PIL makes of a 16-bit grayscale PNG
    ds = build_dataset(DataConfig(name="imagefolder", root=str(folder(tmp_path, {
        "a": {"deep.png": img16}, "b": {"flat.png": gray8()}})), resolution=16), "train")
    x, _ = ds[[f.name for f in ds.files].index("deep.png")]
    expected = torch.from_numpy(np.round(v / 257).astype(np.uint8))  # 0 -> 0, 65535 -> 255, linear between
    assert torch.equal(x, to_float(expected).expand(3, -1, -1))
    assert 0.45 < (x[0].mean() + 1) / 2 < 0.55  # a full-range ramp averages to mid-gray, not white


def test_float_pixels_are_an_error_naming_the_file(tmp_path):
    f32 = Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32), "F")
    ds = build_dataset(DataConfig(name="imagefolder", root=str(folder(tmp_path, {
        "a": {"float.tif": f32}, "b": {"flat.png": gray8()}})), resolution=16), "train")
    with pytest.raises(ConfigError, match=r"unreadable image .*float.tif .*no known range to scale to 8 bits"):
        ds[[f.name for f in ds.files].index("float.tif")]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = folder(tmp_path, {"cat": {"a.png": gray8(1)}, "dog": {"b.png": gray8(2)}})
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "notes.txt").write_text("no images here")
    (root / "train" / "yak" / "deeper").mkdir(parents=True)  # nested folders without images
    for split in ("train", "test"):
        with pytest.raises(ConfigError, match=rf"class folder\(s\) without images .* in {root / 'train'}: emu, yak;"):
            build_dataset(DataConfig(name="imagefolder", root=str(root), resolution=16), split)
    (root / "train" / "yak" / "deeper" / "c.png").write_bytes((root / "train" / "cat" / "a.png").read_bytes())
    (root / "train" / "emu" / "notes.txt").unlink()
    (root / "train" / "emu").rmdir()
    ds = build_dataset(DataConfig(name="imagefolder", root=str(root), resolution=16), "train")
    assert ds.class_names == ["cat", "dog", "yak"]  # an image anywhere below the folder counts


def test_a_bad_image_read_by_a_worker_is_named_in_one_line(tmp_path):
    fixtures.make_imagefolder(tmp_path)
    victim = tmp_path / "train" / "cat" / "b.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), resolution=16), "train")
    with pytest.raises(ConfigError) as without_workers:
        list(torch.utils.data.DataLoader(ds, batch_size=3))
    batches = iter(NamedErrors(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)))
    with pytest.raises(ConfigError) as with_workers:
        list(batches)
    batches.close()  # the worker ends now, not when the error's traceback is collected
    assert str(with_workers.value) == str(without_workers.value)
    assert str(with_workers.value).startswith(f"unreadable image {victim}")


def test_training_with_workers_on_a_bad_image_prints_one_line(tmp_path, capsys):
    fixtures.make_imagefolder(tmp_path / "data")
    victim = tmp_path / "data" / "train" / "cat" / "b.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    code = train_cli.main(["--config", "prior_match_digits", "data.name=imagefolder", f"data.root={tmp_path / 'data'}",
                           "data.resolution=16", "data.num_workers=1", "train.batch_size=6", "train.steps=2",
                           "model.width=4", f"run.dir={tmp_path / 'run'}", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: unreadable image {victim}") and len(err.splitlines()) == 1, err


def stream_with_workers(root, **kw) -> BatchStream:
    cfg = DataConfig(name="imagefolder", root=str(root), resolution=16, num_workers=1)
    return BatchStream(build_dataset(cfg, "train"), 2, seed=0, data_cfg=cfg, **kw)


def test_closing_the_stream_after_a_workers_error_ends_the_workers(tmp_path):
    fixtures.make_imagefolder(tmp_path)
    (tmp_path / "train" / "cat" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    earlier = set(multiprocessing.active_children())  # children of earlier tests are not this stream's
    stream = stream_with_workers(tmp_path)
    # the error stays alive, as it does while train() unwinds through its `finally: stream.close()`
    with pytest.raises(ConfigError, match="unreadable image") as err:
        for _ in range(3):  # one epoch: every image once
            next(stream)
    workers = [w for w in multiprocessing.active_children() if w not in earlier]
    assert workers, "the stream should read with a worker process"
    stream.close()
    alive = [w.pid for w in workers if w.is_alive()]
    err = None  # without close(), only collecting the iterator would end them
    gc.collect()
    assert alive == [], "close() left the DataLoader's workers running"


def test_a_stop_signal_at_a_workers_start_is_absorbed(tmp_path, monkeypatch):
    """The window between a worker's fork and its handlers (torch's SIGTERM handler ends it
    there): a SIGTERM in it waits until the worker absorbs it."""
    import arena.stream

    real = arena.stream._outlive_stop_signals

    def signalled_at_start(worker_id: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the job's SIGTERM, before this worker could ignore it
        real(worker_id)

    fixtures.make_imagefolder(tmp_path)
    monkeypatch.setattr(arena.stream, "_outlive_stop_signals", signalled_at_start)
    stream = stream_with_workers(tmp_path)
    try:
        for _ in range(4):  # two epochs: a worker started twice
            assert next(stream).x.shape == (2, 3, 16, 16)
    finally:
        stream.close()
