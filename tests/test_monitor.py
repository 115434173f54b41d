"""train.monitor (eval/monitor.py): the weighted k-NN by hand, its checks, a short digits
run whose accuracy rises above the random encoder's, an unchanged training trajectory,
and two processes that finish."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from arena import checkpoint as ckpt
from arena.config import load_config
from arena.registry import ConfigError
from arena.trainer import train
from eval.hooks import training_hooks
from eval.monitor import Monitor, check_monitor, knn_predict, linear_accuracy
from tests.helpers import launch_two_cpu_processes, tiny

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.width=0.125", "model.mi_units=32", "model.global_units=32", "objective.prior.hidden=[32]",
        "train.batch_size=32"]


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_knn_vote_by_hand():
    # bank on the unit circle at angles 0, 10, 20 (class 0) and 90, 100 (class 1) degrees
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0, 100.0]) * math.pi / 180
    bank = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [1.0], [5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    q = torch.tensor([[math.cos(math.radians(60)), math.sin(math.radians(60))]])  # 40 deg from 20 deg, 30 from 90
    # k=1: the nearest by cosine is 90 deg (class 1); a scale of a feature never matters
    assert knn_predict(q, bank, labels, 2, k=1, temperature=0.07).tolist() == [1]
    # k=3: 90, 100 (class 1) and 20 (class 0) vote; class 1's weight exp(cos30/T) + exp(cos40/T)
    # beats class 0's exp(cos40/T) at any T
    assert knn_predict(q, bank, labels, 2, k=3, temperature=0.07).tolist() == [1]
    # k=5 (all): class 0 has 0, 10, 20 deg: sum_i exp(cos(d_i)/T) at T = 10 (nearly equal
    # weights, 3 votes against 2) wins; at T = 0.05 the two closest (class 1) win
    c0 = sum(math.exp(math.cos(math.radians(d)) / 10) for d in (60, 50, 40))
    c1 = sum(math.exp(math.cos(math.radians(d)) / 10) for d in (30, 40))
    assert c0 > c1
    assert knn_predict(q, bank, labels, 2, k=5, temperature=10.0).tolist() == [0]
    assert knn_predict(q, bank, labels, 2, k=5, temperature=0.05).tolist() == [1]
    # k above the bank's size is capped
    assert knn_predict(q, bank, labels, 2, k=50, temperature=10.0).tolist() == [0]


def test_linear_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    y = torch.arange(3).repeat(40)
    x = centres[y] + 0.5 * torch.randn(len(y), 3, generator=g)
    assert linear_accuracy(x[:90], y[:90], x[90:], y[90:], 3, steps=50) == 100.0
    # chance with features that say nothing of the class
    noise = torch.randn(len(y), 3, generator=g)
    assert linear_accuracy(noise[:90], y[:90], noise[90:], y[90:], 3, steps=50) < 70.0


@pytest.mark.parametrize("override, message", [
    ("train.monitor.k=0", "train.monitor.k"),
    ("train.monitor.every=0", "train.monitor.every"),
    ("train.monitor.temperature=0", "train.monitor.temperature"),
    ("train.monitor.bank=-1", "train.monitor.bank"),
    ("train.monitor.layers=[y, local]", r"train.monitor.layers\[1\]"),
])
def test_bad_monitor_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("dim_l_digits", ["train.monitor.enabled=true", override])


@pytest.mark.parametrize("layers", ["[]", "[y, y]"])
def test_monitor_layers_are_each_named_once(layers):
    with pytest.raises(ConfigError, match="train.monitor.layers: expected one or more of y, fc, conv, each once"):
        check_monitor(load_config("dim_l_digits", ["train.monitor.enabled=true", f"train.monitor.layers={layers}"]))


def test_monitor_on_a_generator_is_a_config_error(tmp_path):
    cfg = tiny("ie_digits", tmp_path / "ie", "train.monitor.enabled=true")
    with pytest.raises(ConfigError, match="objective 'ie' is a generator; the monitor measures encoders"):
        training_hooks(cfg)
    assert not (tmp_path / "ie").exists()  # refused before training


def test_monitor_needs_classes(tmp_path, monkeypatch):
    from arena.data.base import InMemoryDataset
    from eval import monitor

    unlabelled = InMemoryDataset("folder", "train", torch.zeros(8, 1, 16, 16, dtype=torch.uint8),
                                 torch.full((8,), -1), num_classes=0)
    monkeypatch.setattr(monitor, "probe_datasets", lambda cfg: (unlabelled, unlabelled))
    with pytest.raises(ConfigError, match="train.monitor.enabled: .* has no single-label classes"):
        training_hooks(tiny("dim_l_digits", tmp_path / "r", "train.monitor.enabled=true"))


def test_knn_accuracy_on_digits_rises_above_the_random_encoders(tmp_path):
    from eval.dim_probes import untrained_objective

    cfg = tiny("dim_l_digits", tmp_path / "r", "model.width=0.125", "train.steps=60", "train.log_every=30",
               "train.monitor.enabled=true", "train.monitor.every=30", "train.monitor.linear=true",
               "train.monitor.linear_steps=20")
    monitor = Monitor(cfg)
    assert len(monitor.splits[0].labels) == 1437 and len(monitor.splits[1].labels) == 360  # all of digits
    random = monitor.measure(untrained_objective(cfg), torch.device("cpu"))
    train(cfg, training_hooks(cfg))
    logged = [r for r in rows(tmp_path / "r") if "monitor/knn_y" in r]
    assert [r["step"] for r in logged] == [30, 60]
    assert set(logged[-1]) == {"step", "monitor/knn_y", "monitor/knn_conv", "monitor/linear_y",
                               "monitor/linear_conv"}
    assert all(0 <= v <= 100 for r in logged for v in r.values())
    assert logged[-1]["monitor/knn_y"] > random["monitor/knn_y"] + 1.0, (random, logged)


def test_a_monitored_run_trains_exactly_as_an_unmonitored_one(tmp_path):
    """The measurement draws nothing from the global RNG and leaves the nets in train mode."""
    common = [*TINY, "train.steps=4", "train.checkpoint_every=4", "train.monitor.every=2",
              "train.monitor.bank=64", "train.monitor.queries=32"]
    plain = tiny("dim_l_digits", tmp_path / "plain", *common)
    watched = tiny("dim_l_digits", tmp_path / "watched", *common, "train.monitor.enabled=true",
                   "train.monitor.linear=true", "train.monitor.linear_steps=5")
    train(plain, training_hooks(plain))
    train(watched, training_hooks(watched))
    assert [r["step"] for r in rows(tmp_path / "watched") if "monitor/knn_y" in r] == [2, 4]
    a = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "plain", "latest"))[0]["nets"]
    b = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "watched", "latest"))[0]["nets"]
    for net in a:
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k}"


def test_images_read_from_files_are_kept_once_as_uint8(tmp_path):
    from arena.data import build_dataset, to_uint8
    from tests import fixtures

    fixtures.make_imagefolder(tmp_path / "folder")
    cfg = tiny("dim_l_digits", tmp_path / "r", "data.name=imagefolder", f"data.root={tmp_path / 'folder'}",
               "data.resolution=16", "train.monitor.enabled=true", "train.monitor.k=3")
    monitor = Monitor(cfg)
    bank, queries = monitor.splits
    assert bank.images.dtype == torch.uint8 and bank.images.shape == (6, 3, 16, 16)
    test = build_dataset(cfg.data, "test")
    assert torch.equal(queries.images, torch.stack([to_uint8(test[i][0]) for i in range(3)]))
    assert queries.labels.tolist() == [0, 0, 1]


def test_supervised_encoder_is_monitored_and_shown_on_the_progress_bar(tmp_path):
    from arena.trainer import Trainer

    cfg = tiny("supervised_digits", tmp_path / "r", "model.width=0.125", "train.steps=2", "train.log_every=1",
               "train.monitor.enabled=true", "train.monitor.every=1", "train.monitor.bank=64",
               "train.monitor.queries=32")
    trainer = Trainer(cfg, training_hooks(cfg))
    trainer.train()
    assert [r["step"] for r in rows(tmp_path / "r") if "monitor/knn_conv" in r] == [1, 2]
    assert set(trainer.shown) == {"monitor/knn_y", "monitor/knn_conv"}  # beside the losses on the bar


def test_two_processes_with_the_monitor_finish(tmp_path, cpu_only):
    script = tmp_path / "run2.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from arena.distributed import shutdown
from arena.trainer import train
from eval.hooks import training_hooks
from tests.helpers import tiny
from tests.test_monitor import TINY
cfg = tiny("dim_l_digits", {str(tmp_path / 'two')!r}, *TINY, "train.steps=4", "train.monitor.enabled=true",
           "train.monitor.every=2", "train.monitor.bank=256", "train.monitor.queries=64")
train(cfg, training_hooks(cfg))
shutdown()
""")
    launch_two_cpu_processes(script)
    logged = [r for r in rows(tmp_path / "two") if "monitor/knn_y" in r]
    assert [r["step"] for r in logged] == [2, 4]  # measured once per interval, by the main process


def test_overhead_benchmark_prints_the_share_of_training_time(capsys, cpu_only):
    import importlib.util

    spec = importlib.util.spec_from_file_location("monitor_overhead", ROOT / "benchmarks" / "monitor_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--configs", "dim_l_digits", "--steps", "8", "--repeats", "1", "--device", "cpu",
                       "model.width=0.125", "train.batch_size=16", "train.monitor.bank=128"]) == 0
    line, record = capsys.readouterr().out.splitlines()[-2:]
    r = json.loads(record)
    assert "dim_l_digits on digits 16px" in line and "% of training time" in line
    assert r["every"] == 500 and r["bank"] == 128 and r["queries"] == 360
    assert r["share_pct"] == pytest.approx(100 * r["monitor_s"] / (500 * r["step_s"] + r["monitor_s"]))
