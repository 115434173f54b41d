"""The trainer's GPU path (train.gpu_paths=on) run on the CPU: fused optimizers,
channels_last nets, EMA copies and batches, bf16 autocast penalties, layout conversions
on resume, exact resume, and N processes = 1 process. A GPU machine then has only the
device itself left to test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arena import checkpoint as ckpt
from arena.objective import OBJECTIVES
from arena.trainer import Trainer, make_optimizer
from tests.helpers import assert_same_state, launch_two_cpu_processes, tiny
from tests.test_processes import GAN as SGD_GAN
from tests.test_distributed import TRAIN as DIM_TRAIN
from tests.test_distributed import assert_close as assert_close_to_scale
from tests.test_processes import GlobalNoiseGAN, build_start

ROOT = Path(__file__).resolve().parent.parent
# ie_digits: three players (G, E, T), a contractive penalty on E, an EMA of G. A large lr,
# so that four steps move the weights far beyond float rounding (the comparisons below
# would be vacuous otherwise).
IE = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.z_dim=4",
      "train.batch_size=8", "train.log_every=1", "train.sample_every=100", "train.checkpoint_every=2",
      "optim.lr=1e-2"]
# SGD's update is linear in the gradient, so two implementations (fused or not, NHWC or
# not) end within float rounding of each other. Adam's is not: it divides by sqrt(v), so a
# gradient that is all rounding noise (a conv bias before batch norm) gets a full lr step of
# either sign. Comparisons across implementations use SGD; Adam's are exact or of its state.
LINEAR = ["optim.name=sgd", "optim.lr=0.02", "optim.betas=[0.5, 0.999]"]
CHANNELS_LAST = torch.channels_last


def trained(run_dir, *overrides) -> Trainer:
    trainer = Trainer(tiny("ie_digits", run_dir, *IE, *overrides))
    trainer.train()
    return trainer


def saved(run_dir) -> dict:
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    return state


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def assert_gpu_layout(trainer: Trainer) -> None:
    """Weights, EMA copies, gradients, moments and the last batch in channels_last."""
    objective = trainer.objective
    for module in [objective.nets, *objective.ema.values()]:
        weights = conv_weights(module)
        assert weights and all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in weights)
        assert any(not w.is_contiguous() for w in weights)  # really NHWC, not a 1x1 layout that is both
    for opt in trainer.optimizers.values():
        for p in opt.param_groups[0]["params"]:
            if p.grad is not None:
                assert p.grad.stride() == p.stride()
            moments = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
            assert moments and all(v.stride() == p.stride() for v in moments)  # Adam's or SGD's
    x = trainer.last_batch.x
    assert x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()


def assert_close_weights(a: dict, b: dict, start: dict | None = None, tol: float = 1e-5) -> None:
    for net in a["nets"]:
        for k, v in a["nets"][net].items():
            torch.testing.assert_close(b["nets"][net][k], v, rtol=tol, atol=tol / 10, msg=f"{net}.{k}")
    if start is not None:
        moved = max(float((a["nets"][n][k] - start[n][k]).abs().max()) for n in a["nets"] for k in a["nets"][n])
        assert moved > 1e-2, "the nets hardly trained; the comparison would be vacuous"


def test_the_gpu_path_on_the_cpu_trains_fused_and_channels_last(tmp_path, cpu_only):
    trainer = trained(tmp_path, "train.steps=2", "train.gpu_paths=on")
    assert trainer.procs.device.type == "cpu"
    assert set(trainer.optimizers) == {"G", "E", "T"} and set(trainer.objective.ema) == {"G"}
    for opt in trainer.optimizers.values():
        assert opt.defaults["fused"] is True and opt.param_groups[0]["fused"] is True
    assert_gpu_layout(trainer)


def test_auto_keeps_the_cpu_on_torchs_defaults(tmp_path, cpu_only):
    trainer = trained(tmp_path, "train.steps=1")
    assert all(not opt.defaults["fused"] for opt in trainer.optimizers.values())
    assert all(w.is_contiguous() for w in conv_weights(trainer.objective.nets))
    assert trainer.last_batch.x.is_contiguous()


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_the_gpu_path_trains_the_weights_of_the_default_path(tmp_path, cpu_only, precision):
    """Fused updates and NHWC convolutions change nothing beyond rounding. Under fp16 the
    GradScaler hands the fused optimizers its scale and found-inf flag, and a step it
    skips (the first steps overflow at the initial scale) must leave their state as the
    unfused path leaves it; the tolerance is fp16's, whose NHWC and NCHW convolutions round
    differently (measured: 1e-4 after the weights moved by up to 12)."""
    common = [*LINEAR, "train.steps=4", f"train.mixed_precision={precision}"]
    on = trained(tmp_path / "on", *common, "train.gpu_paths=on")
    off = trained(tmp_path / "off", *common, "train.gpu_paths=off")
    if precision == "fp16":
        init = torch.amp.GradScaler("cpu").get_scale()
        for trainer in (on, off):  # overflowing steps were skipped: the comparison covers them
            assert min(s.get_scale() for s in trainer.scalers.values()) < init
    start = Trainer(tiny("ie_digits", tmp_path / "start", *IE, *LINEAR))
    start.load_data()
    start.build()
    assert_close_weights(saved(tmp_path / "off"), saved(tmp_path / "on"),
                         {n: net.state_dict() for n, net in start.objective.nets.items()},
                         tol=1e-5 if precision == "no" else 1e-2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fused_optimizers_leave_a_step_the_scaler_skips_as_unfused_ones_do(monkeypatch, optimizer):
    """An overflowing first step (fp16) is skipped by both implementations, and the next
    step is the unfused one's: for SGD the momentum starts from that step's gradient alone.
    Uninitialised memory may hold anything: here torch.empty_like hands out NaN, so that a
    buffer the skipped step left unwritten cannot pass for zeros."""
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    results = []
    for fused in (False, True):
        cfg = tiny("nsgan_cp_digits", "unused", *LINEAR, f"optim.name={optimizer}", "optim.weight_decay=0.1",
                   f"train.gpu_paths={'on' if fused else 'off'}")
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1, bias=False)
        opt = make_optimizer(cfg, "D", net)
        assert bool(opt.defaults["fused"]) is fused
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        for x in (float("inf"), 1.0):
            opt.zero_grad()
            scaler.scale(net(torch.full((1, 3), x)).sum()).backward()
            scaler.unscale_(opt)  # what the trainer does before clipping
            scaler.step(opt)
            scaler.update()
        state = {k: v for k, v in opt.state[net.weight].items() if torch.is_tensor(v)}
        results.append((net.weight.detach().clone(), state))
    (unfused, unfused_state), (weight, state) = results
    assert state.keys() == unfused_state.keys()
    assert optimizer == "sgd" or float(state["step"]) == 1.0  # the skipped step is not counted
    torch.testing.assert_close(weight, unfused, rtol=1e-6, atol=1e-7)
    for k, v in state.items():  # SGD's momentum, or Adam's moments and step count
        torch.testing.assert_close(v.float(), unfused_state[k].float(), rtol=1e-6, atol=1e-7, msg=k)


def first_row(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_bf16_penalties_on_the_gpu_path_stay_within_tolerance_of_fp32(tmp_path, cpu_only):
    """The first step (same weights, batch and noise; a small lr, so that the phases after
    the first see nearly the same weights): the losses and the contractive penalty under
    bf16 autocast with channels_last nets are within 2% of the default path's fp32 values
    (tests/test_gpu_path.py bounds the penalty's gradient); the logged means of E's outputs,
    values near 0, within bf16's resolution at 1 (2^-7)."""
    small_lr = ["train.steps=1", "optim.lr=1e-4"]
    trained(tmp_path / "fp32", *small_lr)
    trained(tmp_path / "bf16", *small_lr, "train.gpu_paths=on", "train.mixed_precision=bf16")
    ref, got = first_row(tmp_path / "fp32"), first_row(tmp_path / "bf16")
    assert "encoder/penalty" in ref and set(got) == set(ref)
    for k in set(ref) - {"step", "steps_per_s"}:
        if k.endswith(("/loss", "/penalty")):
            assert got[k] == pytest.approx(ref[k], rel=2e-2), k
        else:
            assert got[k] == pytest.approx(ref[k], abs=2**-7), k
    assert got["encoder/penalty"] != ref["encoder/penalty"]  # it did run in bf16


def test_resume_is_exact_on_the_gpu_path(tmp_path, cpu_only):
    trained(tmp_path / "once", "train.steps=4", "train.gpu_paths=on")
    trained(tmp_path / "twice", "train.steps=2", "train.gpu_paths=on")
    trainer = trained(tmp_path / "twice", "train.steps=4", "train.gpu_paths=on", "run.resume=latest")
    assert_gpu_layout(trainer)
    keys = ("step", "nets", "optimizers", "ema", "scalers", "data")
    assert_same_state({k: saved(tmp_path / "once")[k] for k in keys}, {k: saved(tmp_path / "twice")[k] for k in keys})


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("before,after", [("off", "on"), ("on", "off")])
def test_a_checkpoint_of_the_other_path_resumes_in_this_paths_layout(tmp_path, cpu_only, before, after, optimizer):
    """A CPU run's checkpoint (NCHW weights and moments, unfused) resumed on the GPU path
    (channels_last, fused), and the reverse: weights, EMA copies and moments take the
    layout of this path with their values, and the run goes on from there (with SGD, to
    where an unbroken run of this path ends)."""
    chosen = LINEAR if optimizer == "sgd" else []
    trained(tmp_path / "once", *chosen, "train.steps=4", f"train.gpu_paths={after}")
    trained(tmp_path / "twice", *chosen, "train.steps=2", f"train.gpu_paths={before}")
    checkpoint = saved(tmp_path / "twice")
    trainer = Trainer(tiny("ie_digits", tmp_path / "twice", *IE, *chosen, "train.steps=4",
                           f"train.gpu_paths={after}", "run.resume=latest"))
    trainer.load_data()  # the steps of Trainer.train(), to look between resume and training
    trainer.build()
    assert trainer.resume()
    for name, opt in trainer.optimizers.items():
        assert bool(opt.defaults["fused"]) is (after == "on")
        was = checkpoint["optimizers"][name]["state"]
        for i, p in enumerate(opt.param_groups[0]["params"]):
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert v.stride() == p.stride() and torch.equal(v, was[i][k]), f"{name} {k}"
    for net, state in checkpoint["nets"].items():
        for k, v in trainer.objective.nets[net].state_dict().items():
            assert torch.equal(v, state[k]), f"{net}.{k}"
    trainer.start()
    trainer.loop()
    trainer.close()
    if after == "on":
        assert_gpu_layout(trainer)
    else:
        assert all(w.is_contiguous() for w in conv_weights(trainer.objective.nets))
        assert all(w.is_contiguous() for ema in trainer.objective.ema.values() for w in conv_weights(ema))
    if optimizer == "sgd":
        assert_close_weights(saved(tmp_path / "once"), saved(tmp_path / "twice"))


def test_two_processes_equal_one_on_the_gpu_path(tmp_path, monkeypatch, cpu_only):
    """tests/test_processes.py's GAN comparison (SGD, noise of the global batch) and
    tests/test_distributed.py's DIM one (negatives gathered across processes, SyncBatchNorm)
    with fused SGD and channels_last nets and batches: gradients averaged in the
    parameters' layout."""
    gan = [*SGD_GAN, "objective.name=test_global_noise_gan", "train.gpu_paths=on"]
    dim = [*DIM_TRAIN, "train.gpu_paths=on"]
    script = tmp_path / "run2.py"
    script.write_text(f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from arena.objective import OBJECTIVES
from arena.distributed import shutdown
from arena.trainer import Trainer
from tests.helpers import tiny
from tests.test_processes import GlobalNoiseGAN
OBJECTIVES.register("test_global_noise_gan")(GlobalNoiseGAN)
seen = {{}}
for name, config, overrides in [("gan", "nsgan_cp_digits", {gan!r}), ("dim", "dim_l_digits", {dim!r})]:
    trainer = Trainer(tiny(config, {str(tmp_path)!r} + "/two_" + name, *overrides))
    trainer.train()
    weights = [p for p in trainer.objective.nets.parameters() if p.dim() == 4]
    seen[name] = {{"world": trainer.procs.world, "fused": all(o.defaults["fused"] for o in trainer.optimizers.values()),
                  "nhwc": all(p.is_contiguous(memory_format=torch.channels_last)
                              and (p.grad is None or p.grad.stride() == p.stride()) for p in weights)}}
json.dump(seen, open({str(tmp_path)!r} + f"/rank{{trainer.procs.rank}}.json", "w"))
shutdown()
""")
    launch_two_cpu_processes(script)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            name: {"world": 2, "fused": True, "nhwc": True} for name in ("gan", "dim")}
    monkeypatch.setitem(OBJECTIVES._entries, "test_global_noise_gan", GlobalNoiseGAN)
    one = Trainer(tiny("nsgan_cp_digits", tmp_path / "one_gan", *gan))
    one.train()
    assert_gpu_layout(one)
    assert_close_weights(saved(tmp_path / "one_gan"), saved(tmp_path / "two_gan"), build_start(tmp_path))
    Trainer(tiny("dim_l_digits", tmp_path / "one_dim", *dim)).train()
    one, two = saved(tmp_path / "one_dim")["nets"]["encoder"], saved(tmp_path / "two_dim")["nets"]["encoder"]
    for k, v in one.items():
        assert_close_to_scale(two[k].float(), v.float(), f"trained {k}")
