"""eval.plot_run draws logged curves of several runs; grids upscale small images by nearest neighbour."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from arena.images import save_grid, upscale
from arena.trainer import train
from eval import plot_run as P
from eval import sample_grid
from tests.helpers import tiny


def write_run(folder, lines):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def test_curves_skip_partial_and_non_object_lines(tmp_path):
    run = write_run(tmp_path / "a", [
        json.dumps({"step": 10, "encoder/loss": 2.0, "lr": 1e-3, "note": "text", "ok": True}),
        "[1, 2, 3]", "not json", "",
        json.dumps({"step": 20, "encoder/loss": 1.5, "svm": {"y": {"mean": 61.0}}, "settings": {"runs": 5}}),
        json.dumps({"encoder/loss": 9.9}),  # no step: not on the x axis
        '{"step": 30, "encoder/loss": 1.',  # cut off mid-write
    ])
    c = P.curves(P.read_metrics(run))
    assert c["encoder/loss"] == ([10.0, 20.0], [2.0, 1.5])
    assert c["svm/y/mean"] == ([20.0], [61.0]) and not any(k.startswith("settings") for k in c)
    assert "note" not in c and "ok" not in c


def test_plot_run_overlays_runs_one_panel_per_metric(tmp_path, capsys):
    a = write_run(tmp_path / "a", [json.dumps({"step": s, "loss": 1 / s, "fid_5k": 50 - s}) for s in range(1, 30)])
    b = write_run(tmp_path / "b", [json.dumps({"step": s, "loss": 2 / s, "mi": s}) for s in range(1, 10)])
    out = tmp_path / "curves.png"
    assert P.main(["--run", str(a), "--run", str(b), "--out", str(out)]) == 0
    assert "3 metric(s), 2 run(s)" in capsys.readouterr().out
    w, h = Image.open(out).size
    assert w > h > 200  # three panels side by side
    assert P.plot_runs([a, b], tmp_path / "loss.png", metrics="^loss$") == ["loss"]


@pytest.mark.parametrize("args, message", [
    (["--metrics", "nothing-matches"], "no numeric metrics matching 'nothing-matches'"),
    (["--metrics", "("], "--metrics: not a regular expression"),
    (["--out", "c.xyz"], "matplotlib writes no '.xyz' files; use one of"),
])
def test_plot_run_bad_input_is_named(tmp_path, capsys, args, message):
    run = write_run(tmp_path / "a", [json.dumps({"step": 1, "loss": 1.0})])
    assert P.main(["--run", str(run), "--out", str(tmp_path / "c.png"), *args]) == 2
    assert message in capsys.readouterr().err


def test_plot_run_names_a_missing_metrics_file(tmp_path, capsys):
    assert P.main(["--run", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


def test_grid_cells_are_nearest_neighbour_blocks(tmp_path):
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    big = upscale(x, 64)
    assert big.shape == (4, 1, 64, 64)
    for i, j in [(0, 0), (3, 7), (15, 15)]:  # pixel (i, j) is the 4 x 4 block at (4i, 4j)
        assert (big[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] == x[:, :, i:i + 1, j:j + 1]).all()
    assert upscale(x, 40).shape[-1] == 48  # ceil(40 / 16) = 3: cells of at least 40 px
    assert upscale(x, 0) is x and upscale(x, 16) is x
    path = save_grid(x, tmp_path / "g.png", nrow=2, cell=64)
    png = np.asarray(Image.open(path).convert("L"))
    assert png.shape == (2 + 2 * 66, 2 + 2 * 66)  # torchvision's grid: 2 px padding around 64 px cells
    assert (png[2:66, 2:66] == big[0, 0].numpy()).all()


def test_training_grids_of_16_px_digits_have_64_px_cells(tmp_path):
    cfg = tiny("ie_digits", tmp_path, "data.resolution=16", "model.width=8", "model.z_dim=8", "train.batch_size=8",
               "train.steps=1", "train.sample_every=1", "train.num_samples=4")
    train(cfg)
    w, h = Image.open(tmp_path / "samples" / "step-000001.png").size
    assert (w, h) == (2 + 2 * 66, 2 + 2 * 66)  # 4 samples, 2 a row, each 16 px drawn 4x


def test_sample_grid_cell_must_not_be_negative(tmp_path, capsys):
    assert sample_grid.main(["--run", str(tmp_path), "--cell", "-1", "--out", str(tmp_path / "g.png")]) == 2
    assert "--cell must be >= 0" in capsys.readouterr().err
