"""The paper's remaining figures: JSD with fewer negatives (Fig. 8), the figure commands'
selection and math on tiny inputs, and one tiny end-to-end run of each command."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from arena.config import load_config
from arena.objective import DataInfo, build_objective
from arena.registry import ConfigError
from dim.estimators import jsd_mi


def test_jsd_with_fewer_negatives_by_hand():
    """N = 3 images, L = 1, m = 1: image i's one negative is image i+1 (mod 3), so
    E_neg = mean(sp(s01), sp(s12), sp(s20)) and the estimate is
    mean_i(log 2 - sp(-s_ii)) - E_neg + log 2."""
    s = torch.tensor([[1.0, 2.0, -3.0],
                      [0.5, -1.0, 4.0],
                      [-2.0, 7.0, 3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    e_pos = sum(math.log(2) - sp(-s[i, i].item()) for i in range(3)) / 3
    e_neg = (sp(2.0) + sp(4.0) + sp(-2.0)) / 3 - math.log(2)
    assert jsd_mi(s, max_negatives=1).item() == pytest.approx(e_pos - e_neg, abs=1e-6)
    # all negatives (m = N - 1 = 2) is the plain estimate over the 6 off-diagonal entries
    e_all = (sp(2.0) + sp(-3.0) + sp(0.5) + sp(4.0) + sp(-2.0) + sp(7.0)) / 6 - math.log(2)
    assert jsd_mi(s, max_negatives=2).item() == pytest.approx(e_pos - e_all, abs=1e-6)
    assert jsd_mi(s).item() == pytest.approx(e_pos - e_all, abs=1e-6)


def test_jsd_fewer_negatives_reads_only_the_chosen_images():
    """Unchosen negatives (huge scores) do not change the estimate; every location of a
    chosen image does."""
    n, l, m = 6, 4, 2
    s = torch.full((n, n, l), 50.0)
    for i in range(n):
        s[i, i] = 1.0
        for k in range(1, m + 1):
            s[i, (i + k) % n] = -1.0
    expected = (math.log(2) - F.softplus(torch.tensor(-1.0))) - (F.softplus(torch.tensor(-1.0)) - math.log(2))
    assert jsd_mi(s, max_negatives=m).item() == pytest.approx(expected.item(), abs=1e-6)
    s[0, 1, 3] = 2.0  # a location of a chosen negative moves the estimate
    assert jsd_mi(s, max_negatives=m).item() < expected.item()
    with pytest.raises(ValueError, match="max_negatives"):
        jsd_mi(s, max_negatives=0)


def test_random_negative_subset_is_drawn_from_the_generator():
    s = torch.randn(8, 8, 3)
    a = jsd_mi(s, max_negatives=3, generator=torch.Generator().manual_seed(1))
    b = jsd_mi(s, max_negatives=3, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item() and torch.isfinite(a)


def test_dim_objective_passes_max_negatives_to_jsd():
    cfg = load_config("dim_l_digits", ["objective.estimator=jsd", "objective.max_negatives=2", "objective.gamma=0",
                                       "model.mi_units=64"])
    objective = build_objective(cfg, DataInfo(channels=1, resolution=16, num_classes=10))
    s = torch.randn(8, 8, 16)
    assert objective.mi(s).item() == pytest.approx(jsd_mi(s, max_negatives=2).item(), abs=1e-6)
    assert objective.mi(s).item() != pytest.approx(jsd_mi(s).item(), abs=1e-6)


# ---------------------------------------------------------------------------- the commands


TINY_DIM = ["model.width=0.125", "model.mi_units=32", "model.global_units=32", "objective.prior.hidden=[32]",
            "train.batch_size=16", "train.log_every=1"]


def test_figure_commands_have_help(capsys):
    from eval import ablation, figure8, figure12

    for module, words in ((figure8, "negatives"), (figure12, "--ndm-nets"), (ablation, "--retrain")):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and words in out and "--max-train" in out
        assert "resumes from its newest checkpoint when the" in out  # the shared closing paragraph


def test_figure8_points_and_their_checks(tmp_path):
    from eval import figure8

    args = figure8.build_parser().parse_args(["--negatives", "1,63", "--seeds", "0,1", "--steps", "7",
                                              "--runs-root", str(tmp_path), "model.mi_units=64"])
    specs = figure8.point_specs(args)
    assert [s.key for s in specs] == ["jsd_m1_s0", "jsd_m1_s1", "jsd_m63_s0", "jsd_m63_s1",
                                      "nce_m1_s0", "nce_m1_s1", "nce_m63_s0", "nce_m63_s1"]
    cfg = specs[6].cfg
    assert (cfg.objective.estimator, cfg.objective.max_negatives, cfg.run.seed) == ("nce", 63, 0)
    assert cfg.train.steps == 7 and cfg.model.mi_units == 64 and cfg.run.dir == str(tmp_path / "nce_m63_s0")
    from arena.registry import ConfigError
    for bad, match in ((["--negatives", "64"], "batch - 1 = 63"), (["--negatives", "0"], "1 <= m"),
                       (["--estimators", "dv"], "--estimators"), (["--config", "vae_digits"], "--config")):
        with pytest.raises(ConfigError, match=match):
            figure8.point_specs(figure8.build_parser().parse_args([*bad, "--runs-root", str(tmp_path)]))


def test_figure_series_and_spread():
    from eval.figure8 import series as series8
    from eval.figure12 import series as series12
    from eval.figures import spread

    s = spread([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([4.0])["std"] == 0.0
    records = [{"estimator": "nce", "negatives": 4, "seed": 0, "accuracy": 80.0},
               {"estimator": "nce", "negatives": 1, "seed": 0, "accuracy": 60.0},
               {"estimator": "nce", "negatives": 4, "seed": 1, "accuracy": 82.0},
               {"estimator": "jsd", "negatives": 1, "seed": 0, "skipped": "diverged"}]
    assert series8(records) == {"NCE": [(1, [60.0]), (4, [80.0, 82.0])]}
    records = [{"beta": 2.0, "seed": 0, "layer": "z", "ndm": [0.1, 0.2]},
               {"beta": 0.5, "seed": 0, "layer": "z", "ndm": [0.5]},
               {"beta": 2.0, "seed": 1, "layer": "z", "ndm": [0.3]}]
    assert series12(records) == {"a posterior sample z": [(0.5, [0.5]), (2.0, [0.1, 0.2, 0.3])]}


def test_figure8_end_to_end_and_rerun_reuses(tmp_path, capsys):
    from eval import figure8

    out = tmp_path / "f8.png"
    argv = ["--negatives", "1,15", "--steps", "2", "--svm-runs", "1", "--max-train", "96", "--max-test", "48",
            "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--device", "cpu", *TINY_DIM]
    assert figure8.main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    points = {(p["estimator"], p["negatives"]): p for p in data["points"]}
    assert set(points) == {("jsd", 1), ("jsd", 15), ("nce", 1), ("nce", 15)}
    assert all(0 <= p["accuracy"] <= 100 and p["step"] == 2 for p in points.values())
    assert out.is_file() and "| nce | 15 | 0 |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert figure8.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("reused, not trained") == 4 and err.count("measured before with the same settings") == 4


def test_figure12_end_to_end_reads_the_ndm_code(tmp_path):
    from eval import figure12

    out = tmp_path / "f12.png"
    argv = ["--betas", "0.5,2", "--seeds", "0", "--steps", "2", "--ndm-nets", "2", "--ndm-steps", "5",
            "--max-train", "96", "--max-test", "48", "--runs-root", str(tmp_path / "runs"), "--out", str(out),
            "--device", "cpu", "model.width=0.125", "model.decoder_width=4", "train.batch_size=16"]
    assert figure12.main(argv) == 0
    points = json.loads(out.with_suffix(".json").read_text())["points"]
    assert [(p["beta"], p["layer"], len(p["ndm"])) for p in points] == [(0.5, "z", 2), (2.0, "z", 2)]
    assert all(math.isfinite(v) for p in points for v in p["ndm"]) and out.is_file()
    assert figure12.main([*argv, "--out", str(tmp_path / "mu.png"), "objective.ndm_code=mu"]) == 0
    assert {p["layer"] for p in json.loads((tmp_path / "mu.json").read_text())["points"]} == {"y"}
    with pytest.raises(ConfigError, match="--config: Figure 12 sweeps options of .vae."):
        figure12.point_specs(figure12.build_parser().parse_args(["--config", "dim_l_digits"]))


def test_ablation_panels_follow_the_measures_and_the_labels():
    from eval.ablation import panels

    single = [{"svm_y": 80.0, "ndm_y": 1.0, "mine_y": 2.0, "msssim_y": 0.5}, {"skipped": "alpha = beta = 0"}]
    assert [k for k, _, _ in panels(single, ("svm", "ndm", "mine", "msssim"))] == ["svm_y", "ndm_y", "mine_y",
                                                                                   "msssim_y"]
    assert [(k, best) for k, _, best in panels(single, ("msssim", "ndm"))] == [("ndm_y", "min"), ("msssim_y", "max")]
    multi = [{"svm_y": 80.0, "svm_y_min": 60.0, "svm_y_max": 95.0}]
    shown = panels(multi, ("svm",))
    assert [k for k, _, _ in shown] == ["svm_y", "svm_y_min", "svm_y_max"]
    assert "mean over attributes" in shown[0][1] and "worst attribute" in shown[1][1]


def test_figure10_ablation_on_a_celeba_fixture_gives_attribute_panels(tmp_path):
    """The Figure 10 command end to end on CelebA's on-disk format (6 train / 2 test faces,
    40 attributes): per-attribute SVM accuracy (mean, min, max) and the MS-SSIM panel."""
    from eval import ablation
    from tests import fixtures

    fixtures.make_celeba(tmp_path / "data")
    out = tmp_path / "fig10.png"
    argv = ["--config", "dim_l_celeba", "--alpha", "0,1", "--beta", "1", "--steps", "1", "--measures", "svm,msssim",
            "--svm-runs", "1", "--msssim-epochs", "1", "--runs-root", str(tmp_path / "cells"), "--out", str(out),
            "--device", "cpu", f"data.root={tmp_path / 'data'}", "data.num_workers=0", "model.width=0.125",
            "model.mi_units=32", "objective.prior.hidden=[32]", "train.batch_size=3", "train.log_every=1"]
    assert ablation.main(argv) == 0
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert [(c["alpha"], c["beta"]) for c in cells] == [(0.0, 1.0), (1.0, 1.0)]
    for c in cells:
        assert len(c["svm_y_attributes"]) == 40
        assert c["svm_y_min"] <= c["svm_y"] <= c["svm_y_max"]
        assert c["svm_y"] == pytest.approx(sum(c["svm_y_attributes"]) / 40, abs=0.01)
        assert 0.0 <= c["msssim_y"] <= 1.0 and "ndm_y" not in c and "mine_y" not in c
    assert out.is_file()


@pytest.mark.parametrize("command", ["ablation", "figure8", "figure12"])
def test_sweep_commands_take_config_overrides_among_their_flags(tmp_path, capsys, command):
    """KEY=VALUE groups between flags are config overrides of every point (here a misspelt
    key, named before any point trains), not unrecognised arguments."""
    import importlib

    main = importlib.import_module(f"eval.{command}").main
    argv = ["--config", "vae_digits" if command == "figure12" else "dim_l_digits", "model.widht=8",
            "--runs-root", str(tmp_path / "runs"), "train.log_every=1", "--out", str(tmp_path / "f.png"),
            "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "did you mean 'width'" in err and "unrecognized arguments" not in err
    assert not list(tmp_path.iterdir())
