"""The generator ablation runner: grid checks, one tiny cell trained and measured."""
import json
from pathlib import Path

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
    assert cell["fid"] != cell["fid_ema_copied_bn"]  # the live G's statistics do not fit the EMA weights
    assert "train_seconds" in cell and "| real_mean |" in capsys.readouterr().out
    assert gen_ablation.main([*args, "--no-train"]) == 0  # measured again from the checkpoint
    again = json.loads(out.read_text())["cells"][0]
    assert "train_seconds" not in again and again["fid"] == pytest.approx(cell["fid"])


def cell_steps(cell: dict, grid: dict) -> int:
    """The train.steps gen_ablation gives one cell of a grid."""
    one = {**grid, "cells": {"cell": {"overrides": [], **cell}}}
    return gen_ablation.cell_config("cell", one, Path("runs")).train.steps


def test_equal_data_budget_gives_each_cell_steps_for_the_same_batches():
    grid = {"steps": 600, "budget": "data", "common": ["model.width=8"]}
    steps = {name: cell_steps({"config": config, "overrides": over}, grid) for name, (config, over) in {
        "ie": ("ie_digits", ["objective.g_target=mu_p"]), "ie_real_mean": ("ie_digits", ["objective.g_target=real_mean"]),
        "nsgan_cp": ("nsgan_cp_digits", []), "wgan_gp": ("wgan_gp_digits", [])}.items()}
    assert steps == {"ie": 300, "ie_real_mean": 200, "nsgan_cp": 600, "wgan_gp": 120}
    assert cell_steps({"config": "wgan_gp_digits"}, {**grid, "budget": "steps"}) == 600


def test_results_of_earlier_calls_with_the_same_settings_are_kept(tmp_path, capsys):
    grid = write(tmp_path, "steps: 2\ncells: {a: {config: ie_digits}, b: {config: nsgan_cp_digits}}\n")
    out = tmp_path / "res.json"
    base = ["--grid", grid, "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--no-train"]

    def cells(*extra):
        assert gen_ablation.main([*base, *extra]) == 0
        return [c["cell"] for c in json.loads(out.read_text())["cells"]]

    assert cells("--cells", "b") == ["b"]
    assert cells("--cells", "a") == ["a", "b"]  # b kept, in the grid's order
    assert cells("--cells", "b", "--num-samples", "7") == ["b"]  # other settings: replaced, and said
    assert "holds results of other settings" in capsys.readouterr().err
    out.write_text("[1, 2]")
    assert gen_ablation.main([*base, "--cells", "a"]) == 2
    assert "not a results file of eval.gen_ablation" in capsys.readouterr().err
    assert out.read_text() == "[1, 2]"  # nothing written over it


def test_kept_results_are_never_replaced_by_skips_and_dropped_when_the_cell_changes(tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("steps: 2\ncells: {a: {config: ie_digits}, b: {config: nsgan_cp_digits}}\n")
    out = tmp_path / "res.json"
    args = ["--grid", str(grid_file), "--runs-root", str(tmp_path / "nowhere"), "--out", str(out), "--no-train"]
    assert gen_ablation.main([*args, "--cells", "b"]) == 0
    results = json.loads(out.read_text())
    measured = {"cell": "a", "config": "ie_digits", "overrides": [], "data_batches": 6, "fid": 1.5,
                "fid_ema_copied_bn": 1.6, "fid_raw": 1.4, "kid": 0.01, "auc": 0.9, "overlap": 0.3}
    results["cells"] = [measured, *results["cells"]]
    out.write_text(json.dumps(results))
    assert gen_ablation.main(args) == 0  # a wrong --runs-root: no checkpoints anywhere
    cells = {c["cell"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["a"] == measured and "skipped" in cells["b"]
    assert "a: not trained to step 2 under" in capsys.readouterr().err
    grid_file.write_text("steps: 2\ncells: {a: {config: ie_digits, overrides: [objective.mu_p=2.0]}, "
                         "b: {config: nsgan_cp_digits}}\n")
    assert gen_ablation.main([*args, "--cells", "b"]) == 0
    assert [c["cell"] for c in json.loads(out.read_text())["cells"]] == ["b"]  # a measured other options
    assert "dropping a's earlier result" in capsys.readouterr().err
