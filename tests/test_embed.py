"""eval.embed: features of every image of a folder, in the dataset's order, as the encoder gives them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arena.data import pil_to_uint8, to_float
from arena.trainer import train
from eval import embed as E
from eval.dim_probes import load_encoder_run
from tests import fixtures
from tests.helpers import ROOT, launch_two_cpu_processes, tiny

TINY_DIM = ["data.resolution=16", "model.width=0.125", "model.y_dim=8", "model.mi_units=64", "train.batch_size=4",
            "train.steps=2", "train.checkpoint_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A DIM run trained 2 steps on an image folder (6 train + 3 test images, mixed sizes)."""
    root = tmp_path_factory.mktemp("data")
    fixtures.make_imagefolder(root)
    run = tmp_path_factory.mktemp("run")
    train(tiny("dim_l_digits", run, "data.name=imagefolder", f"data.root={root}", *TINY_DIM))
    return run, root


def by_hand(run, files, layer):
    """The run's encoder applied to each file on its own (decoded as the datasets decode)."""
    _, objective, _ = load_encoder_run(run)
    rows = []
    for f in files:
        with Image.open(f) as img:
            x = to_float(pil_to_uint8(img, 16))[None]
        rows.append(objective.features(x)[layer])
    return torch.cat(rows).numpy()


def test_embed_writes_the_encoders_features_in_path_order(folder_run, tmp_path, cpu_only):
    run, root = folder_run
    out = tmp_path / "feats.npz"
    assert E.main(["--run", str(run), "--data", "imagefolder", f"data.root={root}", "--layer", "y,conv",
                   "--batch-size", "4", "--out", str(out)]) == 0
    f = np.load(out)
    files = [root / "train" / c / n for c, names in [("cat", ["a.png", "b.jpg", "sub/c.png"]),
                                                    ("dog", ["a.jpeg", "b.png", "gray.png"])] for n in names]
    assert list(f["paths"]) == [str(p) for p in files]
    assert f["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    for layer in ("y", "conv"):
        np.testing.assert_allclose(f[layer], by_hand(run, files, layer), rtol=1e-5, atol=1e-6)
    assert f["y"].shape == (6, 8) and f["y"].dtype == np.float32


def test_embed_from_python_on_the_test_split(folder_run, cpu_only):
    run, root = folder_run
    feats = E.embed(run, ["data.name=imagefolder", f"data.root={root}"], split="test", layers=("fc",))
    assert len(feats["paths"]) == 3 and feats["fc"].shape[0] == 3
    np.testing.assert_allclose(feats["fc"], by_hand(run, feats["paths"], "fc"), rtol=1e-5, atol=1e-6)


def test_embed_a_plain_folder_of_images(folder_run, tmp_path, cpu_only):
    run, root = folder_run
    feats = E.embed(run, ["data.name=imagefolder", f"data.root={root / 'test'}"], layers=("y",))
    out = tmp_path / "flat.npz"  # the same from the command line, overrides among the options
    assert E.main(["--run", str(run), "data.name=imagefolder", "--layer", "y", f"data.root={root / 'test'}",
                   "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out)["y"], feats["y"])
    files = [root / "test" / p for p in ("cat/x.png", "cat/y.jpg", "dog/z.png")]  # all images below, sorted
    assert list(feats["paths"]) == [str(f) for f in files] and "labels" not in feats
    np.testing.assert_allclose(feats["y"], by_hand(run, files, "y"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--layer", "w"], "--layer: unknown layer(s) w"),
    (["--layer", "z"], "layer(s) z: objective 'DIM' gives no such features"),  # z: a VAE's posterior sample
    (["train.steps=3"], "only data.KEY=VALUE overrides"),
    (["data.resolution=32"], "reads 3x16x16 images (set data.resolution=16)"),
    (["data.rooot=x"], "data.rooot: unknown key"),
])
def test_embed_bad_input_is_named(folder_run, tmp_path, capsys, args, message):
    run, root = folder_run
    out = tmp_path / "feats.npz"
    out.write_bytes(b"kept")
    assert E.main(["--run", str(run), "--data", "imagefolder", f"data.root={root}", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert out.read_bytes() == b"kept"  # nothing written over


def test_a_gray_encoder_on_an_image_folder_names_the_channels(folder_run, tmp_path, capsys):
    _, root = folder_run
    run = tmp_path / "gray"  # digits: 1 channel; image folders are read as RGB
    train(tiny("dim_l_digits", run, *TINY_DIM))
    assert E.main(["--run", str(run), "--data", "imagefolder", f"data.root={root}", "--out",
                   str(tmp_path / "f.npz")]) == 2
    assert "reads 1x16x16 images (channels come from the data" in capsys.readouterr().err


def test_a_mismatch_on_other_data_names_each_fix_it_needs(tmp_path, capsys):
    run = tmp_path / "gray"  # 1x16x16 digits against 3x32x32 shapes: the resolution can be set, channels not
    train(tiny("dim_l_digits", run, *TINY_DIM))
    assert E.main(["--run", str(run), "--data", "shapes", "data.resolution=32", "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "(set data.resolution=16; channels come from the data and cannot be set)" in err


def test_shards_cover_every_index_once_in_order():
    for n, world in [(9, 2), (3, 4), (10, 3)]:
        parts = [E.shard(n, r, world) for r in range(world)]
        assert torch.cat(parts).tolist() == list(range(n))


def test_two_processes_write_the_one_process_file(folder_run, tmp_path, cpu_only):
    run, root = folder_run
    args = ["--run", str(run), "--data", "imagefolder", f"data.root={root}", "--layer", "y,fc", "--batch-size", "2"]
    script = tmp_path / "embed2.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from eval.embed import main
sys.exit(main({args + ["--out", str(tmp_path / "two.npz")]!r}))
""")
    launch_two_cpu_processes(script)
    assert E.main(args + ["--out", str(tmp_path / "one.npz")]) == 0
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(one.files) == sorted(two.files) == ["fc", "labels", "paths", "y"]
    assert list(two["paths"]) == list(one["paths"]) and len(two["y"]) == 6
    for k in ("y", "fc", "labels"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6)
