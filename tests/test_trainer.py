"""The trainer end to end on tiny data: outputs, exact resume, atomic saves, stops."""
import json
from pathlib import Path

import pytest
import torch

from arena import checkpoint as ckpt
from arena.objective import OBJECTIVES
from arena.prior_match import PriorMatch
from arena.registry import ConfigError
from arena.runs import load_run
from arena.trainer import NonFiniteLoss, train
from tests.helpers import launch_two_cpu_processes, assert_same_state, tiny

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.name=shapes", "data.resolution=8", "data.num_images=256", "model.width=4", "model.out_dim=3",
         "objective.prior.hidden=[16]", "train.batch_size=16", "train.log_every=1", "train.sample_every=100"]


def saved_state(run_dir):
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    return {k: state[k] for k in ("step", "nets", "optimizers", "ema", "scalers", "data")}


def test_run_writes_config_metrics_and_checkpoints(tmp_path):
    cfg = tiny("prior_match_digits", tmp_path, *SMALL, "train.steps=4", "train.checkpoint_every=2",
               "train.keep_checkpoints=1")
    train(cfg)
    assert (tmp_path / "config.yaml").is_file()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert {"discriminator/loss", "encoder/loss", "steps_per_s"} <= set(lines[0])
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["checkpoint-000004"]  # keep 1
    cfg2, objective, step = load_run(tmp_path)
    assert step == 4 and cfg2.train.steps == 4 and isinstance(objective, PriorMatch)


@pytest.mark.parametrize("data", [["data.name=digits"], ["data.name=shapes"]])
def test_grayscale_and_colour_data_reach_the_trainer(tmp_path, data):
    cfg = tiny("prior_match_digits", tmp_path, *SMALL, *data, "train.steps=2")
    objective = train(cfg)
    first = objective.nets["E"].features[0]
    assert first.in_channels == (1 if data == ["data.name=digits"] else 3)


def test_resume_continues_exactly(tmp_path, cpu_only):
    common = [*SMALL, "train.checkpoint_every=3", "train.ema={E: 0.9}"]
    train(tiny("prior_match_digits", tmp_path / "once", *common, "train.steps=6"))
    train(tiny("prior_match_digits", tmp_path / "twice", *common, "train.steps=3"))
    train(tiny("prior_match_digits", tmp_path / "twice", *common, "train.steps=6", "run.resume=latest"))
    assert_same_state(saved_state(tmp_path / "once"), saved_state(tmp_path / "twice"))


def test_resume_with_a_changed_net_names_the_difference(tmp_path):
    train(tiny("prior_match_digits", tmp_path, *SMALL, "train.steps=1"))
    with pytest.raises(ConfigError, match=r"net 'E'.*'head.weight' has shape \(3, 64\) in the checkpoint, \(5, 64\)"):
        train(tiny("prior_match_digits", tmp_path, *SMALL, "model.out_dim=5", "train.steps=2", "run.resume=latest"))


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny("prior_match_digits", tmp_path, *SMALL, "train.steps=4", "train.checkpoint_every=2")
    real_write = ckpt.write

    def dying_write(path, obj):
        if path.name == "state.pt" and "000004" in str(path):
            raise KeyboardInterrupt("killed during save")
        real_write(path, obj)

    monkeypatch.setattr(ckpt, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert (tmp_path / "checkpoints" / ".tmp-checkpoint-000004").is_dir()  # the half-written save
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "checkpoint-000002"
    _, _, step = load_run(tmp_path)
    assert step == 2
    monkeypatch.setattr(ckpt, "write", real_write)
    train(tiny("prior_match_digits", tmp_path, *SMALL, "train.steps=4", "train.checkpoint_every=2",
               "run.resume=latest"))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # cleaned up by the next save
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "checkpoint-000004"


class NanAfter(PriorMatch):
    """prior_match whose encoder loss turns NaN from the 3rd encoder step on."""

    calls = 0

    def loss(self, phase, batch, batch_size):
        out = super().loss(phase, batch, batch_size)
        if phase == "encoder":
            NanAfter.calls += 1
            if NanAfter.calls >= 3:
                out["loss"] = out["loss"] * float("nan")
        return out


@pytest.fixture
def nan_after(monkeypatch):
    """'test_nan_after' in the objective registry for one test only."""
    monkeypatch.setitem(OBJECTIVES._entries, "test_nan_after", NanAfter)
    NanAfter.calls = 0
    return "test_nan_after"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, nan_after):
    cfg = tiny("prior_match_digits", tmp_path, *SMALL, f"objective.name={nan_after}", "train.steps=10",
               "train.checkpoint_every=2", "train.log_every=5")
    with pytest.raises(NonFiniteLoss, match=r"loss 'encoder/loss' became non-finite .* at step 3;"):
        train(cfg)
    # the 3rd step went bad; the checkpoint after 2 steps is the last good one
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["checkpoint-000002"]
    state = saved_state(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["nets"]["E"].values() if v.is_floating_point())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_losses_match_fp32(tmp_path, precision):
    """Same weights, same batch: the first step's losses under autocast are the fp32 ones
    to within the format's precision (and the loss scaling of fp16 leaves no trace)."""
    def first_losses(run_dir, mp):
        train(tiny("prior_match_digits", run_dir, *SMALL, "train.phases=[[discriminator, 1], [encoder, 1]]",
                   "train.steps=1", f"train.mixed_precision={mp}"))
        line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        return {k: v for k, v in line.items() if k.endswith("/loss")}

    ref, got = first_losses(tmp_path / "fp32", "no"), first_losses(tmp_path / precision, precision)
    assert set(ref) == {"discriminator/loss", "encoder/loss"} and set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=2e-2), k


def test_two_processes_train_identical_weights(tmp_path):
    script = tmp_path / "run2.py"
    script.write_text(f"""
import sys, json, torch
sys.path.insert(0, {str(ROOT)!r})
from accelerate import PartialState
from accelerate.utils import gather
from tests.helpers import tiny
from arena.distributed import shutdown
from arena.trainer import train
cfg = tiny("prior_match_digits", {str(tmp_path / 'run')!r}, *{SMALL!r}, "train.steps=3", "train.checkpoint_every=3")
objective = train(cfg)
flat = torch.cat([p.detach().flatten() for p in objective.nets.parameters()])
flat = torch.cat([flat, torch.cat([b.float().flatten() for b in objective.nets.buffers()])])
every = gather(flat[None])
state = PartialState()
if state.is_main_process:
    json.dump({{"world": state.num_processes, "max_diff": float((every - every[0]).abs().max())}},
              open({str(tmp_path / 'out.json')!r}, "w"))
shutdown()
""")
    launch_two_cpu_processes(script)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"world": 2, "max_diff": 0.0}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # one writer, no duplicates
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "run")] == ["checkpoint-000003"]
    state, rng1 = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "run", "latest"), rank=1)
    assert state["world_size"] == 2 and rng1 is not None
