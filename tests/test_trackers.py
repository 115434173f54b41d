"""train.log_with: accelerate's trackers get what metrics.jsonl gets; an unknown name or a
missing package is a ConfigError before anything is written."""
from __future__ import annotations

import json
import sys
import types

import pytest

from arena import metrics_log
from arena.config import load_config
from arena.registry import ConfigError
from arena.trainer import train
from tests.helpers import tiny

RUN = ["model.width=0.125", "model.mi_units=32", "model.global_units=32", "objective.prior.hidden=[32]",
       "train.batch_size=16", "train.log_every=2", "train.steps=4", "train.checkpoint_every=4"]


def test_default_is_metrics_jsonl_only():
    assert load_config("dim_l_digits").train.log_with == []


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.log_with\[1\]: unknown tracker 'tensorbord' \(did you mean "
                                          r"'tensorboard'.*supports: .*wandb"):
        load_config("dim_l_digits", ["train.log_with=[wandb, tensorbord]"])


def test_missing_package_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "_installed", lambda name: name != "wandb")
    cfg = tiny("dim_l_digits", tmp_path / "r", *RUN, "train.log_with=[wandb]")
    with pytest.raises(ConfigError, match="the 'wandb' tracker needs the wandb package, which is not installed: "
                                          "pip install wandb"):
        train(cfg)
    assert not (tmp_path / "r").exists()


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: records what it is given."""

    made: list = []

    def __init__(self, logdir, **kwargs):
        self.logdir, self.kwargs, self.scalars, self.hparams = logdir, kwargs, [], None
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None, **_):
        self.scalars.append((global_step, tag, value))

    def add_hparams(self, values, metric_dict):
        self.hparams = values

    def add_text(self, *args, **kwargs):
        pass

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_tracker_gets_every_logged_value(tmp_path, monkeypatch):
    """accelerate's TensorBoardTracker, with the SummaryWriter replaced by a recorder (the
    tensorboard package need not be installed): each metrics.jsonl value at its step."""
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(metrics_log, "_installed", lambda name: True)
    FakeWriter.made.clear()
    cfg = tiny("dim_l_digits", tmp_path / "r", *RUN, "train.log_with=[tensorboard]")
    train(cfg)
    (writer,) = FakeWriter.made
    assert writer.logdir == str(tmp_path / "r" / "trackers" / "dim_l_digits")
    assert writer.kwargs == {"purge_step": 1}  # a resume from step s drops events after s
    assert writer.hparams["train.steps"] == 4 and writer.hparams["objective.name"] == "dim"
    assert writer.closed
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    expected = sorted((r["step"], k, v) for r in rows for k, v in r.items() if k != "step")
    assert sorted(writer.scalars) == expected and {s for s, _, _ in expected} == {2, 4}


def test_real_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny("dim_l_digits", tmp_path / "r", *RUN, "train.log_with=[tensorboard]"))
    assert list((tmp_path / "r" / "trackers").rglob("events.out.tfevents.*"))
