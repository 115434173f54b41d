"""Bad arguments to the eval CLIs end in one line naming the flag (rc 2), never a traceback,
a NaN, or a silent default; each is checked before the run's checkpoint is loaded."""
from __future__ import annotations

import pytest

from eval import dim_probes, fid_is, sample_grid
from tests import test_fidelity as tf


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """fid_is / sample_grid see a run whose generator is a fixed linear map (load_run swapped)."""
    loads = []

    def load_run(run, checkpoint, device):
        loads.append(run)
        return tf.fake_cfg(), tf.LinearGenerator(), 7

    monkeypatch.setattr(fid_is, "load_run", load_run)
    monkeypatch.setattr(sample_grid, "load_run", load_run)
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "cache"))
    return tmp_path, loads


def fails(main, argv, capsys, message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("args,message", [  # numbers out of range: argparse's types (tests/test_eval_inputs.py)
    (["--metrics", ""], "--metrics: empty; choose from fid, isc, kid, prc"),
    (["--metrics", " , "], "--metrics: empty"),
    (["--metrics", "fid,kdi"], "--metrics: unknown metric 'kdi' (did you mean 'kid'?)"),
])
def test_fid_is_rejects_bad_arguments_before_loading(fake_run, capsys, args, message):
    run, loads = fake_run
    fails(fid_is.main, ["--run", str(run), "--num-samples", "100", "--device", "cpu", *args], capsys, message)
    assert loads == [] and not (run / "metrics.jsonl").exists()


def test_fid_is_metrics_flag_left_out_means_the_runs_metrics(fake_run, capsys):
    run, _ = fake_run
    assert fid_is.main(["--run", str(run), "--num-samples", "100", "--device", "cpu", "--batch-size", "64"]) == 0
    assert '"fid"' in capsys.readouterr().out  # EvalConfig's default metrics include fid


def test_sample_grid_out_is_a_directory(fake_run, capsys):
    run, loads = fake_run
    fails(sample_grid.main, ["--run", str(run), "--out", str(run), "--device", "cpu"], capsys,
          f"--out: {run} is a directory; give the PNG file to write, e.g. {run / 'grid.png'}")
    assert loads == []


def test_sample_grid_unwritable_out_is_named(fake_run, capsys):
    run, _ = fake_run
    (run / "afile").write_text("")
    fails(sample_grid.main, ["--run", str(run), "--out", str(run / "afile" / "grid.png"), "--device", "cpu"],
          capsys, f"--out: cannot write {run / 'afile' / 'grid.png'}")


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--runs", "0"], "--runs must be >= 1, got 0"),  # the mean of 0 SVM runs was a NaN with rc 0
    (["--max-train", "-1"], "--max-train must be >= 0 (0 = all), got -1"),
    (["--max-test", "-5"], "--max-test must be >= 0 (0 = all), got -5"),
    (["--mine-steps", "0"], "--mine-steps must be >= 1"),
    (["--mlp-epochs", "-1"], "--mlp-epochs must be >= 1"),
    (["--svm-c", "0"], "--svm-c must be > 0"),
    (["--probes", ""], "--probes: empty; choose from mine, mlp, msssim, ndm, semi, svm"),
    (["--probes", "svn"], "--probes: unknown probe 'svn' (did you mean 'svm'?)"),
    (["--layers", ","], "--layers: empty"),
])
def test_dim_probes_rejects_bad_arguments_before_loading(tmp_path, capsys, monkeypatch, args, message):
    def no_load(*a, **k):
        raise AssertionError("the run was loaded before the arguments were checked")

    monkeypatch.setattr(dim_probes, "load_encoder_run", no_load)
    fails(dim_probes.main, ["--run", str(tmp_path), *args], capsys, message)
    assert not (tmp_path / "metrics.jsonl").exists()
