"""The implicit-encoder generator and the GAN baselines: steps, eq. 13, a 2-d toy."""
import pytest
import torch
from torch import nn

from arena.config import load_config
from arena.data import build_dataset
from arena.objective import Batch, DataInfo, build_objective
from arena.trainer import make_optimizer, train
from tests.helpers import tiny

TINY = ["data.name=shapes", "data.resolution=16", "data.num_images=128", "model.width=8", "model.z_dim=8",
        "train.batch_size=8"]
CONFIGS = {"ie": "ie_digits", "nsgan_cp": "nsgan_cp_digits", "wgan_gp": "wgan_gp_digits"}


def one_step(cfg, objective, phase_name):
    ds = build_dataset(cfg.data, "train")
    x, y = ds.images[:8].float() / 127.5 - 1, ds.labels[:8]
    phase = next(p for p in objective.schedule() if p.name == phase_name)
    batch = None if phase.data == "none" else Batch(x, y)
    before = {n: [p.detach().clone() for p in objective.nets[n].parameters()] for n in phase.players}
    opts = {n: make_optimizer(cfg, n, objective.nets[n]) for n in phase.players}
    out = objective.loss(phase_name, batch, 8)
    out["loss"].backward()
    for o in opts.values():
        o.step()
    return out, before


@pytest.mark.parametrize("name", ["ie", "nsgan_cp", "wgan_gp", "gan", "lsgan"])
def test_one_step_of_every_phase_moves_its_players(name, tmp_path):
    if name in CONFIGS:
        cfg = tiny(CONFIGS[name], tmp_path, *TINY)
    else:
        cfg = tiny("nsgan_cp_digits", tmp_path, *TINY, f"objective.name={name}", "objective.penalty_weight=0")
    objective = build_objective(cfg, DataInfo(3, 16))
    for phase in objective.schedule():
        out, before = one_step(cfg, objective, phase.name)
        assert all(torch.isfinite(v).all() for v in out.values()), (phase.name, out)
        for player, params in before.items():
            moved = any(not torch.equal(a, b) for a, b in zip(params, objective.nets[player].parameters()))
            assert moved, f"{name}: phase {phase.name} did not move {player}"


def test_default_schedules_follow_the_references(tmp_path):
    wgan = build_objective(tiny("wgan_gp_digits", tmp_path, *TINY), DataInfo(3, 16))
    assert [(p.name, p.players, p.repeats) for p in wgan.schedule()] == [("critic", ("D",), 5), ("generator", ("G",), 1)]
    ie = build_objective(tiny("ie_digits", tmp_path, *TINY), DataInfo(3, 16))
    assert [p.name for p in ie.schedule()] == ["discriminators", "encoder", "generator"]
    assert ie.clip_norms() == {"T": 1.0}
    assert wgan.default_ema == {"G": 0.999}


class Linear(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_generator_gradient_is_eq_13(tmp_path):
    """G(z) = A z + c (as a 1x2x2 image), E(x) = w . x + b:
    L = (mean_i E(G(z_i)) - mu_P)^2  =>  dL/dc = 2 (m - mu_P) w,  dL/dA = 2 (m - mu_P) w mean(z)^T."""
    cfg = tiny("ie_digits", tmp_path, *TINY, "objective.mu_p=1.5", "objective.g_target=mu_p")
    objective = build_objective(cfg, DataInfo(1, 4))  # nets replaced below
    torch.manual_seed(0)
    A, c = nn.Parameter(torch.randn(4, 8)), nn.Parameter(torch.randn(4))
    w, b = torch.randn(4), torch.tensor(0.3)
    G = Linear(lambda z: (z @ A.T + c).view(-1, 1, 2, 2))
    G.A, G.c = A, c
    objective.nets["G"] = G
    objective.nets["E"] = Linear(lambda x: (x.flatten(1) @ w + b)[:, None])
    torch.manual_seed(1)
    z = torch.randn(16, 8)
    torch.manual_seed(1)  # the objective draws the same z
    out = objective.loss("generator", None, 16)
    out["loss"].backward()
    m = ((z @ A.T + c) @ w + b).mean().detach()
    assert out["loss"].item() == pytest.approx((m - 1.5).item() ** 2, rel=1e-5)
    torch.testing.assert_close(c.grad, 2 * (m - 1.5) * w)
    torch.testing.assert_close(A.grad, 2 * (m - 1.5) * torch.outer(w, z.mean(0)), rtol=1e-5, atol=1e-6)


def test_ie_encoder_maps_real_and_fake_to_mu_p_and_mu_q_on_a_2d_toy(tmp_path):
    """Real data N((2, 2), I), a frozen generator making N((-2, 0), I): the encoder side
    of the game alone (T_P, T_Q and E phases, the discriminators at 10x the encoder's
    learning rate) makes E's means approach mu_P = 1 and mu_Q = -1. GAN-style games
    oscillate, so the means are averaged over the last 300 of 600 rounds."""
    torch.manual_seed(0)
    cfg = tiny("ie_digits", tmp_path, *TINY, "objective.contractive=0.1", "objective.t_hidden=[32]")
    objective = build_objective(cfg, DataInfo(1, 4))  # nets replaced below
    objective.nets["E"] = nn.Sequential(nn.Flatten(), nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
    objective.nets["G"] = Linear(lambda z: (z[:, :2] + torch.tensor([-2.0, 0.0])).view(-1, 2, 1, 1))
    opts = {"T": torch.optim.Adam(objective.nets["T"].parameters(), lr=1e-2, betas=(0.5, 0.999)),
            "E": torch.optim.Adam(objective.nets["E"].parameters(), lr=1e-3, betas=(0.5, 0.999))}
    means = []
    for i in range(600):
        x = (torch.randn(128, 2) + 2.0).view(-1, 2, 1, 1)
        for phase, player in (("discriminators", "T"), ("encoder", "E")):
            opts[player].zero_grad()
            out = objective.loss(phase, Batch(x, torch.zeros(128)), 128)
            out["loss"].backward()
            opts[player].step()
        if i >= 300:
            means.append((out["E_real"].item(), out["E_fake"].item()))
    e_real, e_fake = torch.tensor(means).mean(0).tolist()
    assert e_real == pytest.approx(1.0, abs=0.3) and e_fake == pytest.approx(-1.0, abs=0.3)


def test_full_64x64_nets_take_one_step_at_batch_2(tmp_path):
    cfg = load_config("ie_lsun", [f"run.dir={tmp_path}", "data.name=shapes", "train.batch_size=2"])
    assert cfg.model.arch == "resnet64" and cfg.data.resolution == 64
    objective = build_objective(cfg, DataInfo(3, 64))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    for phase in objective.schedule():
        out = objective.loss(phase.name, None if phase.data == "none" else Batch(x, torch.zeros(2)), 2)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])


def test_training_writes_a_sample_grid_and_samples_are_deterministic(tmp_path):
    cfg = tiny("ie_digits", tmp_path, "data.resolution=16", "model.width=8", "model.z_dim=8",
               "train.batch_size=16", "train.steps=2", "train.sample_every=1", "train.num_samples=16")
    objective = train(cfg)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000001.png", "step-000002.png"]
    z = objective.latent(4, torch.Generator().manual_seed(0))
    a, b = objective.generate(z), objective.generate(z)
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1
    running = [m.running_mean.clone() for m in objective.nets["G"].modules() if isinstance(m, nn.BatchNorm2d)]
    objective.generate(z, ema=False)  # sampling never moves the trained statistics
    assert all(torch.equal(r, m.running_mean) for r, m in
               zip(running, [m for m in objective.nets["G"].modules() if isinstance(m, nn.BatchNorm2d)]))
