"""The implicit encoder's options (paper A.7 leaves them open): the math of each one."""
import json

import pytest
import torch
from torch import nn

from arena.objective import Batch, DataInfo
from arena.registry import ConfigError
from arena.trainer import build_objective, clip_gradients
from implicit_gen.base import recompute_batchnorm
from eval import figure14
from eval.figure14 import separability, target_separability
from tests.helpers import tiny

TINY = ["data.name=shapes", "data.resolution=16", "data.num_images=128", "model.width=8", "model.z_dim=8",
        "train.batch_size=8"]


class Fn(nn.Module):
    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fn(x)


def ie(tmp_path, *overrides, info=DataInfo(1, 4)):
    objective = build_objective(tiny("ie_digits", tmp_path, *TINY, *overrides), info)
    return objective


def linear_nets(objective, w, b=0.3):
    """G(z) = A z + c as a 1x2x2 image, E(x) = w . x + b (nets replaced)."""
    torch.manual_seed(0)
    A, c = nn.Parameter(torch.randn(4, 8)), nn.Parameter(torch.randn(4))
    objective.nets["G"] = Fn(lambda z: (z @ A.T + c).view(-1, 1, 2, 2), A=A, c=c)
    objective.nets["E"] = Fn(lambda x: (x.flatten(1) @ w + b)[:, None])
    return A, c


def test_generator_target_real_mean_pulls_to_the_mean_of_e_on_real_data(tmp_path):
    """g_target=real_mean: L = (mean_i E(G(z_i)) - mean_j E(x_j))^2 with the real mean
    a constant: dL/dc = 2 (m - r) w; the generator phase then draws a data batch."""
    objective = ie(tmp_path, "objective.g_target=real_mean", "objective.mu_p=5.0")
    w = torch.randn(4)
    A, c = linear_nets(objective, w)
    x = torch.randn(16, 1, 2, 2)
    torch.manual_seed(1)
    z = torch.randn(16, 8)
    torch.manual_seed(1)
    out = objective.loss("generator", Batch(x, torch.zeros(16)), 16)
    out["loss"].backward()
    m = ((z @ A.T + c) @ w + 0.3).mean().detach()
    r = (x.flatten(1) @ w + 0.3).mean()
    assert out["target"].item() == pytest.approx(r.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(((m - r) ** 2).item(), rel=1e-5)
    torch.testing.assert_close(c.grad, 2 * (m - r) * w)
    phases = {p.name: p for p in objective.schedule()}
    assert phases["generator"].data == "fresh" and objective.data_batches_per_step() == 3


def test_generator_target_mu_p_is_eq_13_and_draws_no_data(tmp_path):
    objective = ie(tmp_path, "objective.mu_p=1.5", "objective.g_target=mu_p")
    w = torch.randn(4)
    A, c = linear_nets(objective, w)
    torch.manual_seed(1)
    z = torch.randn(16, 8)
    torch.manual_seed(1)
    out = objective.loss("generator", None, 16)
    m = ((z @ A.T + c) @ w + 0.3).mean().detach()
    assert out["target"].item() == 1.5 and out["loss"].item() == pytest.approx(((m - 1.5) ** 2).item(), rel=1e-5)
    assert objective.data_batches_per_step() == 2


def test_data_batches_per_step_of_the_baselines(tmp_path):
    assert build_objective(tiny("nsgan_cp_digits", tmp_path, *TINY), DataInfo(1, 16)).data_batches_per_step() == 1
    assert build_objective(tiny("wgan_gp_digits", tmp_path, *TINY), DataInfo(1, 16)).data_batches_per_step() == 5
    fig14 = tiny("ie_digits", tmp_path, *TINY, "objective.g_target=mu_p",
                 "train.phases=[[discriminators, 50], [encoder, 50], [generator, 1]]")
    assert build_objective(fig14, DataInfo(1, 16)).data_batches_per_step() == 100


@pytest.mark.parametrize("on, sides", [("real", ("real",)), ("fake", ("fake",)), ("both", ("real", "fake"))])
def test_contractive_penalty_on_real_fake_or_both(tmp_path, on, sides):
    """E(x) = ||x||^2 / 2 has dE/dx = x, so the penalty E ||dE/dx||^2 is the mean squared
    norm of the inputs it is taken at; G makes one constant image. Both sides: the sum."""
    objective = ie(tmp_path, f"objective.contractive_on={on}", "objective.contractive=3.0")
    fake_image = torch.full((1, 1, 2, 2), 0.5)
    objective.nets["G"] = Fn(lambda z: fake_image.expand(len(z), -1, -1, -1) + 0 * z.sum())
    objective.nets["E"] = Fn(lambda x: 0.5 * x.flatten(1).pow(2).sum(1, keepdim=True))
    x = torch.randn(16, 1, 2, 2)
    expected = {"real": x.flatten(1).pow(2).sum(1).mean(), "fake": torch.tensor(4 * 0.25)}
    out = objective.loss("encoder", Batch(x, torch.zeros(16)), 16)
    penalty = sum(expected[s] for s in sides)
    assert out["penalty"].item() == pytest.approx(penalty.item(), rel=1e-5)
    zero = ie(tmp_path, f"objective.contractive_on={on}", "objective.contractive=0.0")
    zero.nets["G"], zero.nets["E"], zero.nets["T"] = objective.nets["G"], objective.nets["E"], objective.nets["T"]
    base = zero.loss("encoder", Batch(x, torch.zeros(16)), 16)
    assert (out["loss"] - base["loss"]).item() == pytest.approx(3.0 * penalty.item(), rel=1e-4)


@pytest.mark.parametrize("mode", ["each", "together"])
def test_t_p_and_t_q_clipped_each_or_together(tmp_path, mode):
    """T_P's gradient has norm 10, T_Q's norm 0.5, limit 1: clipped each on its own,
    T_P's becomes 1 and T_Q's stays; clipped together (one norm over both, ~10.01),
    both shrink by the same factor, so T_Q's step nearly vanishes."""
    objective = ie(tmp_path, f"objective.t_clip={mode}", "objective.t_clip_norm=1.0")
    T = objective.nets["T"]
    for net, norm in ((T["P"], 10.0), (T["Q"], 0.5)):
        params = list(net.parameters())
        grads = [torch.randn_like(p) for p in params]
        scale = norm / torch.cat([g.flatten() for g in grads]).norm()
        for p, g in zip(params, grads):
            p.grad = g * scale
    clip_gradients(objective, "T", objective.clip_norms()["T"])

    def norm(net):
        return torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item()

    if mode == "each":
        assert norm(T["P"]) == pytest.approx(1.0, rel=1e-4) and norm(T["Q"]) == pytest.approx(0.5, rel=1e-4)
    else:
        total = (10.0 ** 2 + 0.5 ** 2) ** 0.5
        assert norm(T["P"]) == pytest.approx(10.0 / total, rel=1e-4)
        assert norm(T["Q"]) == pytest.approx(0.5 / total, rel=1e-4)


def test_gradient_penalty_on_t_at_both_inputs(tmp_path):
    """T(y) = a y + b: ||dT/dy||^2 = a^2 at the prior samples and at E's outputs, so the
    penalty adds t_penalty * (a^2 + a^2) / 2 per discriminator to the loss."""
    losses, w = {}, torch.randn(4)
    for weight in (0.0, 2.0):
        objective = ie(tmp_path, f"objective.t_penalty={weight}")
        linear_nets(objective, w)
        slopes = {"P": 0.7, "Q": -1.3}
        objective.nets["T"] = nn.ModuleDict({k: nn.Linear(1, 1) for k in slopes})
        for k, a in slopes.items():
            nn.init.constant_(objective.nets["T"][k].weight, a)
        torch.manual_seed(3)
        losses[weight] = objective.loss("discriminators", Batch(torch.randn(16, 1, 2, 2), torch.zeros(16)), 16)["loss"]
    expected = 2.0 * (0.7 ** 2 + 1.3 ** 2)
    assert (losses[2.0] - losses[0.0]).item() == pytest.approx(expected, rel=1e-5)


def test_t_architecture_targets_and_config_errors(tmp_path, monkeypatch):
    objective = ie(tmp_path, "objective.t_hidden=[64]", "objective.t_activation=leaky_relu",
                   "objective.mu_p=0.5", "objective.mu_q=-0.5")
    import implicit_gen.ie as ie_module

    drawn = []
    real_gaussian = ie_module.gaussian

    def spy(n, dim, mean=0.0, std=1.0, **kw):
        drawn.append((mean, std))
        return real_gaussian(n, dim, mean, std, **kw)

    monkeypatch.setattr(ie_module, "gaussian", spy)
    linear_nets(objective, torch.randn(4))
    objective.loss("discriminators", Batch(torch.randn(16, 1, 2, 2), torch.zeros(16)), 16)
    assert drawn == [(0.5, 1.0), (-0.5, 1.0)]  # T_P against N(mu_P, 1), T_Q against N(mu_Q, 1)
    layers = list(objective.nets["T"]["Q"].net)
    assert [type(m) for m in layers] == [nn.Linear, nn.LeakyReLU, nn.Linear] and layers[1].negative_slope == 0.2
    assert layers[0].out_features == 64
    for key, value in (("g_target", "mu_q"), ("contractive_on", "neither"), ("t_clip", "some"),
                       ("t_activation", "tanh")):
        with pytest.raises(ConfigError, match=f"objective.{key}: unknown value '{value}'.*valid choices"):
            ie(tmp_path, f"objective.{key}={value}")
    with pytest.raises(ConfigError, match="objective.t_penalty"):
        ie(tmp_path, "objective.t_penalty=-1")


def test_recompute_batchnorm_averages_the_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU()).eval()
    net[1].running_mean.fill_(7.0)
    latent = lambda n, g: torch.randn(n, 3, generator=g) * 2 + 1  # noqa: E731
    state = torch.get_rng_state()
    recompute_batchnorm(net, latent, batches=4, batch_size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), state) and not net.training  # no training RNG drawn, mode kept
    g = torch.Generator().manual_seed(5)
    h = [net[0](latent(32, g)).detach() for _ in range(4)]
    torch.testing.assert_close(net[1].running_mean, torch.stack([b.mean(0) for b in h]).mean(0))
    torch.testing.assert_close(net[1].running_var, torch.stack([b.var(0) for b in h]).mean(0))
    assert net[1].momentum == 0.1


def test_ema_generator_re_estimates_batchnorm_once_per_weight_change(tmp_path):
    """The EMA G samples with statistics estimated for its own weights, recomputed only
    when those weights change; the raw G keeps its running statistics."""
    objective = ie(tmp_path, "objective.ema_bn_batches=3", info=DataInfo(1, 16))
    G = objective.nets["G"]
    ema = objective.ema["G"] = torch.nn.Module()
    import copy

    ema = objective.ema["G"] = copy.deepcopy(G).eval()
    bn = [m for m in ema.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    bn.running_var.fill_(123.0)
    z = objective.latent(4, torch.Generator().manual_seed(0))
    objective.generate(z)
    estimated = bn.running_var.clone()
    assert not torch.allclose(estimated, torch.full_like(estimated, 123.0))
    bn.running_var.fill_(123.0)  # untouched weights: no second estimate
    objective.generate(z)
    assert bn.running_var.eq(123.0).all()
    with torch.no_grad():
        next(ema.parameters()).mul_(1.01)  # the trainer's EMA update changes the weights in place
    objective.generate(z)
    assert not bn.running_var.eq(123.0).any()
    raw_bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    raw_bn.running_var.fill_(5.0)
    objective.generate(z, ema=False)
    assert raw_bn.running_var.eq(5.0).all()
    off = ie(tmp_path, "objective.ema_bn_batches=0", info=DataInfo(1, 16))
    off.ema["G"] = copy.deepcopy(off.nets["G"]).eval()
    off_bn = [m for m in off.ema["G"].modules() if isinstance(m, nn.BatchNorm2d)][-1]
    off_bn.running_var.fill_(123.0)
    off.generate(z)
    assert off_bn.running_var.eq(123.0).all()


def test_separability_auc_and_histogram_overlap():
    real, fake = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([1.0, 2.0])
    assert separability(real, fake) == {"auc": 1.0, "overlap": 0.0}
    assert separability(fake, real)["auc"] == 0.0
    # pairs (real > fake): 2>1, 2=2 (half), 3>1, 3>2 of 2 x 2 -> (1 + 0.5 + 1 + 1) / 4
    assert separability(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0]), bins=2)["auc"] == 0.875
    same = torch.randn(500, generator=torch.Generator().manual_seed(0))
    assert separability(same, same) == {"auc": 0.5, "overlap": pytest.approx(1.0)}
    # bins [0, 2), [2, 4]: real 1/2, 1/2; fake 1, 0 -> overlap 1/2
    assert separability(torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.5]), bins=2)["overlap"] == 0.5


def test_target_separability_is_that_of_two_unit_gaussians():
    assert target_separability(1.0, -1.0) == {"auc": pytest.approx(0.92135, abs=1e-5),
                                              "overlap": pytest.approx(0.31731, abs=1e-5)}
    assert target_separability(0.5, 0.5) == {"auc": pytest.approx(0.5), "overlap": pytest.approx(1.0)}
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4000, generator=g) + 0.5, torch.randn(4000, generator=g) - 0.5
    drawn, exact = separability(real, fake, bins=40), target_separability(0.5, -0.5)
    assert drawn["auc"] == pytest.approx(exact["auc"], abs=0.015)  # 0.760
    assert drawn["overlap"] == pytest.approx(exact["overlap"], abs=0.05)  # 0.617, less the binning's loss


def test_figure14_draws_a_chosen_panel_with_ie_only_options(tmp_path, monkeypatch, capsys):
    out = tmp_path / "f.png"
    argv = ["figure14", "--panels", "ie", "--ie", "objective.mu_p=0.5", "--ie", "objective.mu_q=-0.5",
            "--steps", "1", "--ratio", "1", "--samples", "20", "--runs", str(tmp_path / "runs"), "--out", str(out),
            "--split", "train", "model.width=8", "model.z_dim=8", "train.batch_size=16", "objective.ema_bn_batches=0"]
    monkeypatch.setattr("sys.argv", argv)
    figure14.main()
    (ie,) = json.loads(out.with_suffix(".json").read_text())["panels"]
    assert out.is_file() and ie["title"] == "IE (ours)" and len(ie["real"]) == len(ie["fake"]) == 20
    assert ie["target_auc"] == pytest.approx(0.7602, abs=1e-4) and ie["options"] == argv[4:7:2]
    assert 0 <= ie["auc"] <= 1 and ie["split"] == "train" and "(E on its targets" in capsys.readouterr().out
    assert ie["schedule"] == "rounds"
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", argv[:6] + ["objective.mu_q=-1.5"] + argv[7:])  # one option changed
    figure14.main()
    assert len(list((tmp_path / "runs").glob("ie*"))) == 2  # trained beside the first run, which is kept
    figure14.main()
    assert "finished at step 1; reused, not trained" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["figure14", "--panels", "ie,bigan"])
    assert figure14.main() == 2
    assert "--panels: bigan unknown" in capsys.readouterr().err


def test_figure14_over_trains_the_ie_in_rounds_of_t_and_e():
    assert figure14.expand(figure14.IE_ROUNDS, 3) == [["discriminators", 1], ["encoder", 1]] * 3 + [["generator", 1]]
    assert figure14.expand(figure14.IE_BLOCKS, 3) == [["discriminators", 3], ["encoder", 3], ["generator", 1]]
    gan = figure14.LOSSES["WGAN-GP"][2]
    assert figure14.expand(gan, 50) == [["critic", 50], ["generator", 1]]
