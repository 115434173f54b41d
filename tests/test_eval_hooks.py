"""Metrics inside training: logged with the sample count in the name; missing weights fail first."""
import json
from pathlib import Path

import pytest

import train as train_cli
from arena.runs import load_run
from arena.trainer import train
from eval.fidelity import evaluate_generator
from eval.hooks import count_label, training_hooks
from tests.helpers import launch_two_cpu_processes, tiny

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


def test_two_process_metrics_equal_one_process_metrics(tmp_path):
    """Under accelerate with 2 CPU processes, each generates its share of n = 101
    samples of a trained ie_digits generator; the metric over exactly those n equals
    the single-process value."""
    root = Path(__file__).resolve().parent.parent
    train(tiny("ie_digits", tmp_path / "run", *SMALL))
    kwargs = dict(num_samples=101, metrics=["fid", "kid", "isc"], features="auto", seed=3, batch_size=16,
                  cache_root=str(tmp_path / "cache"))
    cfg, objective, _ = load_run(tmp_path / "run")
    single = evaluate_generator(objective, cfg, **kwargs)
    script = tmp_path / "metrics2.py"
    script.write_text(f"""
import json, sys
sys.path.insert(0, {str(root)!r})
import implicit_gen
from arena.runs import load_run
from arena.distributed import processes, shutdown
from eval.fidelity import evaluate_generator
procs = processes()
cfg, objective, _ = load_run({str(tmp_path / 'run')!r})
out = evaluate_generator(objective, cfg, procs=procs, **{kwargs!r})
if procs.main:
    json.dump(out, open({str(tmp_path / 'out.json')!r}, "w"))
shutdown()
""")
    launch_two_cpu_processes(script)
    double = json.loads((tmp_path / "out.json").read_text())
    assert double.keys() == single.keys()
    for k in single:
        assert double[k] == pytest.approx(single[k], rel=1e-4, abs=1e-6), k


def test_more_metric_samples_than_memory_holds_fail_before_training(tmp_path, capsys):
    code = train_cli.main(["--config", "ie_digits", f"run.dir={tmp_path / 'run'}", "eval.every=1",
                           "eval.features=auto", "eval.num_samples=1000000000", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "eval.num_samples: 1000000000 samples need about" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
