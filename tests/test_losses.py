"""Divergences and penalties against hand-computed values, also under autocast."""
import math

import pytest
import torch
from torch import nn

from arena import losses as L


def sp(x):
    return math.log1p(math.exp(x))


def test_jsd_terms_match_hand_values():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    # E[log sigmoid(r)] + E[log(1 - sigmoid(f))]
    expected = (-(sp(-2.0) + sp(1.0)) - (sp(0.5) + sp(-3.0))) / 2
    assert L.jsd_bound(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert L.d_loss_jsd(real, fake).item() == pytest.approx(-expected, rel=1e-6)
    # at D = 1/2 everywhere the bound is -log 4 (the JSD of identical distributions is 0)
    zero = torch.zeros(5)
    assert L.jsd_bound(zero, zero).item() == pytest.approx(-math.log(4), rel=1e-6)


def test_generator_losses_match_hand_values():
    fake = torch.tensor([1.0, -2.0])
    assert L.g_loss_nonsaturating(fake).item() == pytest.approx((sp(-1.0) + sp(2.0)) / 2, rel=1e-6)
    assert L.g_loss_saturating(fake).item() == pytest.approx(-(sp(1.0) + sp(-2.0)) / 2, rel=1e-6)
    assert L.g_loss_wasserstein(fake).item() == pytest.approx(0.5)
    assert L.g_loss_least_squares(fake).item() == pytest.approx(0.5 * (0.0 + 9.0) / 2)


def test_critic_losses_match_hand_values():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -1.0])
    assert L.d_loss_wasserstein(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert L.d_loss_least_squares(real, fake).item() == pytest.approx(0.5 * (0 + 4) / 2 + 0.5 * (0 + 1) / 2)


def test_softplus_form_is_stable_for_huge_logits():
    big = torch.tensor([1e4, -1e4])
    for fn in (L.g_loss_nonsaturating, L.g_loss_saturating):
        assert torch.isfinite(fn(big))
    assert torch.isfinite(L.d_loss_jsd(big, big))


def test_registry_pairs_and_unknown_name():
    from implicit_gen.gans import GAN_LOSSES

    d, g = GAN_LOSSES.get("nsgan")
    assert d is L.d_loss_jsd and g is L.g_loss_nonsaturating
    with pytest.raises(ValueError, match="did you mean 'lsgan'"):
        GAN_LOSSES.get("lsgn", key="objective.loss")


def linear_net(dim=6, out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, out))


def test_contractive_penalty_of_linear_net_is_squared_weight_norm():
    net = linear_net(out=1)
    x = torch.randn(4, 6)
    penalty, out = L.contractive_penalty(net, x)
    w = net[1].weight
    assert penalty.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
    assert out.shape == (4, 1)
    # multi-output: outputs are summed before differentiating, so grad = W^T 1
    net3 = linear_net(out=3)
    penalty3, _ = L.contractive_penalty(net3, x)
    assert penalty3.item() == pytest.approx(net3[1].weight.sum(0).pow(2).sum().item(), rel=1e-5)


def test_gradient_penalty_of_linear_net_is_closed_form():
    net = linear_net()
    a, b = torch.randn(8, 6), torch.randn(8, 6)
    norm = net[1].weight.norm().item()
    assert L.gradient_penalty(net, a, b).item() == pytest.approx((norm - 1) ** 2, rel=1e-5)
    assert L.gradient_penalty(net, a, b, center=0.0).item() == pytest.approx(norm**2, rel=1e-5)


def test_penalty_weight_gradients_flow():
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(5, 3)
    penalty, _ = L.contractive_penalty(net, x)
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net[0].parameters())


def test_penalties_are_exact_under_fp16_autocast_and_loss_scaling(dtype=torch.float16):
    # fp16 runs the penalty in fp32 (its input gradient would under/overflow); bf16 stays
    # in bf16 within a stated tolerance: tests/test_gpu_path.py.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(8, 6), torch.randn(8, 6)

    def weight_grads(autocast: bool, scale: float):
        net.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            cp, _ = L.contractive_penalty(net, x)
            gp = L.gradient_penalty(net, x, y, generator=torch.Generator().manual_seed(0))
            total = cp + gp
        (total * scale).backward()  # what a GradScaler does; unscale afterwards
        # (the last bias gets no gradient: input gradients do not depend on it)
        return total.detach(), [None if p.grad is None else p.grad / scale for p in net.parameters()]

    ref_value, ref_grads = weight_grads(False, 1.0)
    value, grads = weight_grads(True, 2.0**16)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-5)
    assert [g is None for g in grads] == [r is None for r in ref_grads]
    for g, r in ((g, r) for g, r in zip(grads, ref_grads) if g is not None):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
