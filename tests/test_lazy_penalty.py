"""Lazy regularization (`objective.penalty_every: k`): the schedule, the weight x k, the
default k = 1 unchanged, resume, and no host reads in the losses."""
from __future__ import annotations

import contextlib

import pytest
import torch

import arena.trainer as trainer
from arena import checkpoint as ckpt
from arena.objective import Batch, DataInfo
from arena.registry import ConfigError
from arena.trainer import build_objective, train
from tests.helpers import assert_same_state, tiny

GAN = ["data.name=shapes", "data.resolution=16", "data.num_images=64", "model.width=8", "model.z_dim=8",
       "train.batch_size=8"]
DIM = ["data.name=shapes", "data.resolution=16", "data.num_images=64", "model.width=0.125", "model.mi_units=64",
       "objective.prior.hidden=[16]", "train.batch_size=8"]
PRIOR = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.out_dim=3",
         "objective.prior.hidden=[16]", "objective.prior.penalty=1.0", "train.batch_size=8"]
# config, overrides, the phase whose penalty is lazy
CASES = {
    "nsgan_cp": ("nsgan_cp_digits", GAN, "critic"),
    "wgan_gp": ("wgan_gp_digits", GAN, "critic"),
    "ie": ("ie_digits", GAN, "encoder"),
    "dim": ("dim_l_digits", DIM, "prior"),
    "prior_match": ("prior_match_digits", PRIOR, "discriminator"),
}
WEIGHT = {"nsgan_cp": "penalty_weight", "wgan_gp": "penalty_weight", "ie": "contractive"}


def build(tmp_path, name: str, k: int):
    config, overrides, phase = CASES[name]
    cfg = tiny(config, tmp_path, *overrides, f"objective.penalty_every={k}")
    torch.manual_seed(0)
    res = cfg.data.resolution
    return build_objective(cfg, DataInfo(3, res)), phase


def phase_loss(objective, phase: str, call: int) -> dict:
    objective.calls = {phase: call}
    x = torch.rand(8, 3, objective.cfg.data.resolution, objective.cfg.data.resolution,
                   generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)  # the same noise (fakes, interpolates, prior samples) on every call
    return objective.loss(phase, Batch(x, torch.zeros(8, dtype=torch.long)), 8)


def penalty_weight(objective, name: str) -> float:
    return getattr(objective.opts, WEIGHT[name]) if name in WEIGHT else objective.opts.prior.penalty


def test_schedule_is_every_kth_run_with_weight_k(tmp_path):
    objective, phase = build(tmp_path, "wgan_gp", 4)
    scales = []
    for call in range(9):
        objective.calls = {phase: call}
        scales.append(objective.penalty_scale(phase))
    assert scales == [4.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 4.0]
    one, _ = build(tmp_path, "wgan_gp", 1)
    assert {one.penalty_scale(phase) for one.calls[phase] in range(5)} == {1.0}
    with pytest.raises(ConfigError, match="objective.penalty_every: must be >= 1"):
        tiny("wgan_gp_digits", tmp_path, "objective.penalty_every=0")


@pytest.mark.parametrize("name", list(CASES))
def test_lazy_penalty_is_k_times_the_penalty_on_its_runs_and_absent_between(tmp_path, name):
    every, phase = build(tmp_path, name, 1)
    lazy, _ = build(tmp_path, name, 4)
    ref = phase_loss(every, phase, 0)
    weight = penalty_weight(every, name)
    assert ref["penalty"] > 0 and weight > 0
    base = ref["loss"] - weight * ref["penalty"]  # the loss without its penalty
    on, off = phase_loss(lazy, phase, 4), phase_loss(lazy, phase, 5)
    torch.testing.assert_close(on["penalty"], ref["penalty"])
    torch.testing.assert_close(on["loss"], base + 4 * weight * ref["penalty"])
    assert "penalty" not in off  # not computed, so not logged as 0 either
    torch.testing.assert_close(off["loss"], base, rtol=1e-5, atol=1e-6)
    # k = 1 is the method as before: every run, weight x 1
    assert torch.equal(phase_loss(every, phase, 3)["loss"], ref["loss"])


@pytest.mark.parametrize("phases", ["[[critic, 2], [generator, 1]]",
                                    "[[critic, 1], [generator, 1], [critic, 1]]"])  # a phase named twice
def test_penalty_runs_are_counted_across_steps_and_resume_continues_the_schedule(tmp_path, monkeypatch, phases,
                                                                                 cpu_only):
    """2 critic runs a step and k = 3: the penalty falls on critic runs 0, 3, 6 (steps 1,
    2, 4), straddling step boundaries; 2 steps + resume for 2 more equal 4 steps, also when
    the critic's runs are interleaved with the generator's."""
    import implicit_gen.gans as gans

    runs_all, penalized = [], []  # critic runs as the objective sees them; those with a penalty
    real_penalty, real_loss = gans.contractive_penalty, gans.GAN.loss

    def counted(net, x):
        penalized.append(runs_all[-1])
        return real_penalty(net, x)

    def loss(self, phase, batch, batch_size):
        if phase == "critic":
            runs_all.append(self.calls[phase])
        return real_loss(self, phase, batch, batch_size)

    monkeypatch.setattr(gans, "contractive_penalty", counted)
    monkeypatch.setattr(gans.GAN, "loss", loss)
    common = [*GAN, "objective.penalty_every=3", f"train.phases={phases}",
              "train.checkpoint_every=2", "train.log_every=1"]
    train(tiny("nsgan_cp_digits", tmp_path / "once", *common, "train.steps=4"))
    assert runs_all == list(range(8)) and penalized == [0, 3, 6]
    train(tiny("nsgan_cp_digits", tmp_path / "twice", *common, "train.steps=2"))
    train(tiny("nsgan_cp_digits", tmp_path / "twice", *common, "train.steps=4", "run.resume=latest"))
    assert runs_all[8:] == list(range(8)) and penalized[3:] == [0, 3, 6]  # resumed: counts on from 4
    state = {}
    for run in ("once", "twice"):
        saved, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / run, "latest"))
        state[run] = {k: saved[k] for k in ("step", "nets", "optimizers", "ema", "data")}
    assert_same_state(state["once"], state["twice"])


class HostRead(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    """Reading a tensor's value on the host (.item(), .tolist(), float(t), int(t), `if t:`)
    raises: on a GPU each of these waits for the device."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(name):
        def fn(self, *a, **k):
            raise HostRead(f"Tensor.{name} inside a training step")
        return fn

    try:
        for n in names:
            setattr(torch.Tensor, n, refuse(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("name", list(CASES))
def test_losses_read_nothing_back_from_the_device(tmp_path, name, monkeypatch):
    config, overrides, _ = CASES[name]
    build_real = trainer.build_objective

    def guarded(cfg, info):
        objective = build_real(cfg, info)
        loss = objective.loss

        def checked(phase, batch, batch_size):
            with no_host_reads():
                return loss(phase, batch, batch_size)
        objective.loss = checked
        return objective

    monkeypatch.setattr(trainer, "build_objective", guarded)
    train(tiny(config, tmp_path, *overrides, "objective.penalty_every=2", "train.steps=2",
               "train.checkpoint_every=100", "train.sample_every=100"))
    with pytest.raises(HostRead):
        with no_host_reads():
            float(torch.ones(()))  # the guard itself works
