"""Trainer options checked on what the trainer really did: EMA against a hand computation,
clipping and per-player learning rates through the size of an SGD step, the linear
schedule, optimizer choices, n_critic counted by the optimizer, and exact resume of
the GAN objectives (EMA, n_critic) and of fp16 (GradScaler state)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from arena import checkpoint as ckpt
from arena.config import load_config
from arena.trainer import Hook, make_optimizer, train
from tests.helpers import assert_same_state, tiny

PM = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.out_dim=3",
      "objective.prior.hidden=[16]", "train.batch_size=8", "train.log_every=1", "train.sample_every=100",
      "train.phases=[[discriminator, 1], [encoder, 1]]"]
GEN = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.z_dim=4",
       "train.batch_size=8", "train.log_every=1", "train.sample_every=100"]


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def recorded_train(cfg) -> tuple[object, list[dict]]:
    """train(cfg), with every player's parameters recorded at step 0 and after each step."""
    seen: list[dict] = []

    def record(run, step):
        seen.append({name: flat(net).clone() for name, net in run.objective.nets.items()})

    from arena import trainer

    real_build = trainer.build_objective

    def build_and_record(cfg_, info):
        objective = real_build(cfg_, info)
        seen.append({name: flat(net).clone() for name, net in objective.nets.items()})
        return objective

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "build_objective", build_and_record)
        objective = train(cfg, [Hook(1, record)])
    return objective, seen


# ---------------------------------------------------------------------------- EMA


def test_ema_is_the_decayed_average_of_the_weights_after_each_step(tmp_path, cpu_only):
    cfg = tiny("prior_match_digits", tmp_path, *PM, "train.steps=3", "train.ema={E: 0.8}")
    objective, seen = recorded_train(cfg)
    ema = seen[0]["E"]  # the EMA copy starts as the initial weights
    for after in seen[1:]:
        ema = 0.8 * ema + 0.2 * after["E"]
    torch.testing.assert_close(flat(objective.ema["E"]), ema, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ema, seen[-1]["E"])  # an average, not the last weights
    assert set(objective.ema) == {"E"}
    for b_ema, b in zip(objective.ema["E"].buffers(), objective.nets["E"].buffers()):
        assert torch.equal(b_ema, b)  # buffers (batch norm statistics) are copied, not averaged


# ---------------------------------------------------------------------------- clipping, lr


SGD = ["optim.name=sgd", "optim.betas=[0.0, 0.999]", "optim.lr=0.1"]  # momentum 0: a step is -lr * grad


def step_sizes(seen: list[dict], name: str) -> list[float]:
    # (float32 weights of size ~0.1 resolve these 1e-5 steps to ~1e-3 relative)
    return [(b[name] - a[name]).norm().item() for a, b in zip(seen, seen[1:])]


def test_the_three_clip_settings_and_which_wins(tmp_path):
    """SGD without momentum and tiny clip norms: each player's step is exactly lr * its
    clip norm. A player override beats the objective's default (T: t_clip_norm), which
    beats optim.clip_norm (the rest)."""
    common = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.z_dim=4",
              "train.batch_size=8", "objective.t_hidden=[8]", *SGD, "train.steps=2",
              "objective.t_clip=together",  # one norm over T_P and T_Q: T (both nets) steps lr * limit
              "optim.clip_norm=1.0e-4", "objective.t_clip_norm=2.0e-4", "optim.players={E: {clip_norm: 3.0e-4}}"]
    _, seen = recorded_train(tiny("ie_digits", tmp_path / "a", *common))
    for name, limit in (("T", 2.0e-4), ("E", 3.0e-4), ("G", 1.0e-4)):
        assert step_sizes(seen, name) == pytest.approx([0.1 * limit] * 2, rel=2e-3), name
    _, seen = recorded_train(tiny("ie_digits", tmp_path / "b", *common,
                                  "optim.players={T: {clip_norm: 5.0e-4, lr: 0.3}}"))
    assert step_sizes(seen, "T") == pytest.approx([0.3 * 5.0e-4] * 2, rel=2e-3)
    assert step_sizes(seen, "E") == pytest.approx([0.1 * 1.0e-4] * 2, rel=2e-3)  # the override is T's only


def test_linear_schedule_decays_the_learning_rate_to_zero(tmp_path):
    # E's gradients here are ~1e-6: a huge lr with a tinier clip norm makes steps of 1e-5
    cfg = tiny("prior_match_digits", tmp_path, *PM, *SGD, "optim.lr=1000.0", "optim.players={D: {lr: 1000.0}}",
               "optim.clip_norm=1.0e-8", "optim.schedule=linear", "train.steps=4")
    _, seen = recorded_train(cfg)
    for name in ("E", "D"):
        # step s (1-based) runs at lr * (1 - (s - 1) / steps)
        assert step_sizes(seen, name) == pytest.approx([1.0e-5 * f for f in (1, 0.75, 0.5, 0.25)], rel=1e-2)


# ---------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_choice_and_player_overrides(tmp_path, name):
    cfg = load_config("prior_match_digits", [f"run.dir={tmp_path}", f"optim.name={name}", "optim.lr=0.01",
                                             "optim.betas=[0.3, 0.9]", "optim.weight_decay=0.1",
                                             "optim.players={D: {lr: 0.02, betas: [0.6, 0.7], weight_decay: 0.0}}"])
    g = torch.tensor([[0.5, -2.0]])
    results = {}
    for player in ("E", "D"):
        net = nn.Linear(2, 1, bias=False)
        nn.init.constant_(net.weight, 1.0)
        opt = make_optimizer(cfg, player, net)
        for _ in range(2):
            net.weight.grad = g.clone()
            opt.step()
        results[player] = net.weight.detach()
    for player, (lr, b1, b2, wd) in {"E": (0.01, 0.3, 0.9, 0.1), "D": (0.02, 0.6, 0.7, 0.0)}.items():
        w, m, v, buf = torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), None
        for t in (1, 2):  # the update rules written out
            if name == "sgd":  # momentum = betas[0], L2 decay in the gradient
                d = g + wd * w
                buf = d if buf is None else b1 * buf + d
                w = w - lr * buf
                continue
            grad = g + wd * w if name == "adam" else g  # adam: L2 in the gradient
            if name == "adamw":
                w = w * (1 - lr * wd)  # decoupled decay
            m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
            w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
        torch.testing.assert_close(results[player], w, rtol=1e-6, atol=1e-7, msg=f"{name} {player}")


# ---------------------------------------------------------------------------- n_critic


def adam_steps(run_dir, player) -> int:
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    return int(state["optimizers"][player]["state"][0]["step"])


@pytest.mark.parametrize("phases,critic_steps", [(None, 5), ("[[critic, 2], [generator, 1]]", 2)])
def test_n_critic_repeats_are_executed(tmp_path, phases, critic_steps):
    extra = [] if phases is None else [f"train.phases={phases}"]
    train(tiny("wgan_gp_digits", tmp_path, *GEN, "train.steps=3", *extra))
    assert adam_steps(tmp_path, "D") == 3 * critic_steps and adam_steps(tmp_path, "G") == 3


# ---------------------------------------------------------------------------- resume


def saved_state(run_dir):
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    return {k: state[k] for k in ("step", "nets", "optimizers", "ema", "scalers", "data")}


@pytest.mark.parametrize("config,extra", [
    ("ie_digits", ["objective.t_hidden=[8]"]),
    ("wgan_gp_digits", ["train.phases=[[critic, 3], [generator, 1]]"]),
    ("prior_match_digits", ["model.out_dim=3", "objective.prior.hidden=[16]", "train.mixed_precision=fp16"]),
], ids=["ie", "wgan_gp", "fp16"])
def test_resume_continues_exactly(tmp_path, config, extra, cpu_only):
    small = GEN if config != "prior_match_digits" else [a for a in PM if not a.startswith(("model.", "objective."))]
    common = [*small, *extra, "train.checkpoint_every=2"]
    train(tiny(config, tmp_path / "once", *common, "train.steps=4"))
    train(tiny(config, tmp_path / "twice", *common, "train.steps=2"))
    train(tiny(config, tmp_path / "twice", *common, "train.steps=4", "run.resume=latest"))
    once, twice = saved_state(tmp_path / "once"), saved_state(tmp_path / "twice")
    assert_same_state(once, twice)
    if config != "prior_match_digits":
        assert set(once["ema"]) == {"G"}  # the generators' default EMA is part of what resumed
    else:  # the scalers moved off their initial state (scale 2^16, no growth count): resuming them matters
        assert all(s["scale"] != 2.0**16 or s["_growth_tracker"] > 0 for s in once["scalers"].values())
