"""The generator ablation runner: grid checks, one tiny cell trained and measured."""
import json

import pytest

from arena.registry import ConfigError
from eval import gen_ablation


def write(tmp_path, text):
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return str(p)


def test_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        gen_ablation.read_grid(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown key.*stpes"):
        gen_ablation.read_grid(write(tmp_path, "stpes: 3\ncells: {a: {config: ie_digits}}\n"))
    with pytest.raises(ConfigError, match="cell 'a' needs 'config'"):
        gen_ablation.read_grid(write(tmp_path, "steps: 3\ncells: {a: {overides: []}}\n"))
    assert gen_ablation.main(["--grid", write(tmp_path, "steps: 3\ncells: {a: {config: ie_digits}}\n"),
                              "--out", str(tmp_path / "o.json"), "--cells", "b"]) == 2


def test_one_tiny_cell_is_trained_measured_and_reused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "cache"))
    grid = write(tmp_path, "steps: 2\ncommon: [model.width=8, model.z_dim=8, train.batch_size=16, "
                           "train.sample_every=2, objective.ema_bn_batches=2]\n"
                           "cells: {real_mean: {config: ie_digits, overrides: [objective.g_target=real_mean]}}\n")
    out = tmp_path / "res.json"
    args = ["--grid", grid, "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--num-samples", "150",
            "--device", "cpu"]
    assert gen_ablation.main(args) == 0
    cell = json.loads(out.read_text())["cells"][0]
    assert cell["step"] == 2 and cell["data_batches"] == 6  # 3 batches a step with the real-mean target
    assert 0 <= cell["auc"] <= 1 and 0 <= cell["overlap"] <= 1
    assert cell["fid"] > 0 and cell["fid_raw"] > 0 and cell["fid_ema_copied_bn"] > 0
    assert "train_seconds" in cell and "| real_mean |" in capsys.readouterr().out
    assert gen_ablation.main([*args, "--no-train"]) == 0  # measured again from the checkpoint
    again = json.loads(out.read_text())["cells"][0]
    assert "train_seconds" not in again and again["fid"] == pytest.approx(cell["fid"])
