"""The objectives' losses against formulas evaluated by hand on small tensors.

The nets are replaced by tiny ones whose input gradients have a closed form (a tanh
MLP: d/dx sum_k f_k(x) = W1^T ((sum_k W2[k]) * (1 - tanh^2(W1 x + b1)))), so the
penalties are checked without autograd. The random draws (z, prior samples, WGAN-GP's
interpolation weights) are replayed from the same seed in the order the objective makes them.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.objective import Batch, DataInfo
from arena.objective import build_objective
from tests.helpers import tiny

N, Z = 6, 3  # batch, latent size
INFO = DataInfo(channels=1, resolution=4)  # the built nets are replaced: only the config matters
SMALL = ["data.name=shapes", "data.resolution=16", "model.width=4", f"model.z_dim={Z}", f"train.batch_size={N}"]
sp = F.softplus


class TanhMLP(nn.Module):
    """x [B, ...] -> W2 tanh(W1 x + b1) + b2, with its input gradient in closed form."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(torch.randn(hidden, d_in, generator=g))
        self.b1 = nn.Parameter(torch.randn(hidden, generator=g))
        self.W2 = nn.Parameter(torch.randn(d_out, hidden, generator=g))
        self.b2 = nn.Parameter(torch.randn(d_out, generator=g))

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.W1.T + self.b1) @ self.W2.T + self.b2

    @torch.no_grad()
    def input_grad(self, x):
        """d/dx of the sum of the outputs, per sample: [B, d_in]."""
        t = torch.tanh(x.flatten(1) @ self.W1.T + self.b1)
        return (self.W2.sum(0) * (1 - t**2)) @ self.W1


class LinearG(nn.Module):
    """z [B, Z] -> tanh(A z + c) as [B, 1, 2, 2] images."""

    def __init__(self, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(4, Z, generator=g))
        self.c = nn.Parameter(torch.randn(4, generator=g))

    def forward(self, z):
        return torch.tanh(z @ self.A.T + self.c).view(-1, 1, 2, 2)


def x_real(seed: int = 2) -> torch.Tensor:
    return torch.rand(N, 1, 2, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gan(tmp_path, config, *overrides):
    objective = build_objective(tiny(config, tmp_path, *SMALL, *overrides), INFO)
    objective.nets["G"], objective.nets["D"] = LinearG(), TanhMLP(4, 1)
    return objective


def critic_loss(objective):
    """The critic phase's output on x_real(), then (replayed from the same seed) D, the
    real batch and the fake batch it drew; the RNG is left where the phase's G left it."""
    x = x_real()
    torch.manual_seed(0)
    out = objective.loss("critic", Batch(x, torch.zeros(N)), N)
    torch.manual_seed(0)
    fake = objective.nets["G"](torch.randn(N, Z)).detach()
    return out, objective.nets["D"], x, fake


def check_generator_loss(objective, formula):
    """The generator phase's loss is formula(D(G(z))) for the z it draws."""
    torch.manual_seed(1)
    out = objective.loss("generator", None, N)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = formula(objective.nets["D"](objective.nets["G"](torch.randn(N, Z))))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------- NS-GAN-CP


def test_nsgan_cp_critic_and_generator_losses(tmp_path):
    objective = gan(tmp_path, "nsgan_cp_digits", "objective.penalty_weight=3.0")
    out, D, x, fake = critic_loss(objective)
    with torch.no_grad():
        cp = D.input_grad(x).pow(2).sum(1).mean()  # contractive (R1) penalty at the real data
        expected = sp(-D(x)).mean() + sp(D(fake)).mean() + 3.0 * cp
    assert out["penalty"].item() == pytest.approx(cp.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)

    check_generator_loss(objective, lambda d_fake: sp(-d_fake).mean())


# ---------------------------------------------------------------------------- WGAN-GP


def test_wgan_gp_critic_loss_with_a_nonlinear_critic(tmp_path):
    """E D(fake) - E D(real) + lambda E (||grad D(x_hat)|| - 1)^2 at x_hat = eps x_real +
    (1 - eps) x_fake, eps ~ U[0, 1] per sample. The critic is nonlinear, so the penalty
    depends on where the interpolates are: swapping eps and 1 - eps changes it."""
    objective = gan(tmp_path, "wgan_gp_digits", "objective.penalty_weight=10.0")
    out, D, x, fake = critic_loss(objective)
    eps = torch.rand(N, 1, 1, 1)

    def gp(e):
        return (D.input_grad(e * x + (1 - e) * fake).norm(dim=1) - 1).pow(2).mean()

    with torch.no_grad():
        expected = D(fake).mean() - D(x).mean() + 10.0 * gp(eps)
    assert out["penalty"].item() == pytest.approx(gp(eps).item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(gp(1 - eps).item() - gp(eps).item()) > 1e-2 * gp(eps).item()  # the weight matters here

    check_generator_loss(objective, lambda d_fake: -d_fake.mean())


# ---------------------------------------------------------------------------- IE


def ie(tmp_path, *overrides, out_dim: int = 2):
    objective = build_objective(tiny("ie_digits", tmp_path, *SMALL, f"model.out_dim={out_dim}",
                                     "objective.t_hidden=[8]", "objective.mu_p=1.5", "objective.mu_q=-0.5",
                                     "objective.contractive=2.0", "objective.g_target=mu_p",
                                     "objective.contractive_on=real", *overrides), INFO)
    objective.nets["G"], objective.nets["E"] = LinearG(), TanhMLP(4, out_dim)
    return objective


def test_ie_discriminator_loss(tmp_path):
    """T_P: N(mu_P, 1) (real) against E(x_real) (fake); T_Q: N(mu_Q, 1) against E(G(z));
    each the JSD critic loss E sp(-T(v)) + E sp(T(y))."""
    objective = ie(tmp_path)
    E, T, G, x = objective.nets["E"], objective.nets["T"], objective.nets["G"], x_real()
    torch.manual_seed(0)
    out = objective.loss("discriminators", Batch(x, torch.zeros(N)), N)
    torch.manual_seed(0)
    z = torch.randn(N, Z)
    v_p = 1.5 + torch.randn(N, 2)
    v_q = -0.5 + torch.randn(N, 2)
    with torch.no_grad():
        y_real, y_fake = E(x), E(G(z))
        jsd_p = sp(-T["P"](v_p)).mean() + sp(T["P"](y_real)).mean()
        jsd_q = sp(-T["Q"](v_q)).mean() + sp(T["Q"](y_fake)).mean()
    assert out["loss"].item() == pytest.approx((jsd_p + jsd_q).item(), rel=1e-5)
    assert out["jsd_P"].item() == pytest.approx(-jsd_p.item(), rel=1e-5)
    assert out["jsd_Q"].item() == pytest.approx(-jsd_q.item(), rel=1e-5)


@pytest.mark.parametrize("encoder_loss", ["nonsaturating", "saturating"])
def test_ie_encoder_loss(tmp_path, encoder_loss):
    """Fool T_P on real and T_Q on generated data (-log D, or log(1 - D) when saturating),
    plus contractive * E ||d sum_k E_k / dx||^2 at the real data."""
    objective = ie(tmp_path, f"objective.encoder_loss={encoder_loss}")
    E, T, G, x = objective.nets["E"], objective.nets["T"], objective.nets["G"], x_real()
    torch.manual_seed(0)
    out = objective.loss("encoder", Batch(x, torch.zeros(N)), N)
    torch.manual_seed(0)
    z = torch.randn(N, Z)
    with torch.no_grad():
        t_real, t_fake = T["P"](E(x)), T["Q"](E(G(z)))
        if encoder_loss == "nonsaturating":
            fool = sp(-t_real).mean() + sp(-t_fake).mean()
        else:
            fool = -sp(t_real).mean() - sp(t_fake).mean()
        penalty = E.input_grad(x).pow(2).sum(1).mean()
    assert out["penalty"].item() == pytest.approx(penalty.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((fool + 2.0 * penalty).item(), rel=1e-5)


def test_ie_generator_loss_sums_the_squared_mean_gap_over_dimensions(tmp_path):
    objective = ie(tmp_path, out_dim=3)
    E, G = objective.nets["E"], objective.nets["G"]
    torch.manual_seed(0)
    out = objective.loss("generator", None, N)
    torch.manual_seed(0)
    with torch.no_grad():
        mean = E(G(torch.randn(N, Z))).mean(0)  # [3]
    assert out["loss"].item() == pytest.approx((mean - 1.5).pow(2).sum().item(), rel=1e-5)


# ---------------------------------------------------------------------------- prior matching


@pytest.mark.parametrize("kind", ["nonsaturating", "saturating"])
def test_prior_encoder_loss_saturating_and_not(kind):
    from arena.prior import encoder_loss

    D = nn.Linear(2, 1)
    y = torch.randn(5, 2)
    got = encoder_loss(D, y, kind)
    with torch.no_grad():
        d = D(y)
    want = sp(-d).mean() if kind == "nonsaturating" else -sp(d).mean()  # -log D(y) / log(1 - D(y))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


# ---------------------------------------------------------------------------- coordinates


def test_relative_coordinate_target_is_source_minus_target():
    """The relative predictor gets (y, c_src, c_tgt) and its classes are
    (i_src - i_tgt + h - 1, j_src - j_tgt + w - 1). A predictor that reads both positions
    from one-hot local features and answers with that offset has ~zero loss; answering
    with the opposite sign (or rows and columns swapped) does not."""
    from dim.coords import CoordinatePredictor, coordinate_loss

    h, w = 3, 4
    local = torch.eye(h * w).view(h * w, h, w).expand(2, -1, -1, -1)  # channel l = 1 at location l

    class Oracle(CoordinatePredictor):
        sign = 1

        def forward(self, y, c_src, c_tgt):
            s, t = c_src.argmax(1), c_tgt.argmax(1)
            d_row = self.sign * (s // w - t // w) + h - 1
            d_col = self.sign * (s % w - t % w) + w - 1
            return (F.one_hot(d_row, 2 * h - 1).float() * 50, F.one_hot(d_col, 2 * w - 1).float() * 50)

    oracle = Oracle(1, h * w, (h, w), "relative", hidden=4)
    y = torch.zeros(2, 1)
    assert coordinate_loss(oracle, y, local, torch.Generator().manual_seed(0)).item() < 1e-6
    oracle.sign = -1
    assert coordinate_loss(oracle, y, local, torch.Generator().manual_seed(0)).item() > 1.0
