"""Metrics inside training: logged with the sample count in the name; missing weights fail first."""
import json


import train as train_cli
from arena.trainer import train
from eval.hooks import count_label, training_hooks
from tests.helpers import tiny

SMALL = ["model.width=8", "model.z_dim=8", "train.batch_size=16", "train.steps=2", "train.sample_every=100"]


def test_count_label():
    assert [count_label(n) for n in (5000, 50000, 1500, 200)] == ["5k", "50k", "1500", "200"]


def test_metrics_run_inside_training_every_eval_every_steps(tmp_path):
    cfg = tiny("ie_digits", tmp_path, *SMALL, "eval.every=2", "eval.num_samples=120",
               "eval.metrics=[fid, kid, isc]", "eval.features=auto")
    train(cfg, training_hooks(cfg))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    metric_lines = [line for line in lines if "fid_120" in line]
    assert len(metric_lines) == 1 and metric_lines[0]["step"] == 2
    assert {"fid_120", "kid_mean_120", "isc_mean_120"} <= set(metric_lines[0])
    assert metric_lines[0]["fid_120"] > 0


def test_missing_inception_weights_fail_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("DIM_INCEPTION_WEIGHTS", raising=False)
    code = train_cli.main(["--config", "ie_digits", f"run.dir={tmp_path / 'run'}", "eval.every=1",
                           "eval.features=inception", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
