"""Adversarial divergence terms and input-gradient penalties, as small pure functions.

Conventions: `real` and `fake` are a discriminator's unnormalized outputs (logits)
on samples of the target / data distribution and of the model. Every function
returns a scalar to *minimize*; the trainer owns backward.

    sigmoid(x) = 1 / (1 + e^-x),  softplus(x) = log(1 + e^x)
    log sigmoid(x)     = -softplus(-x)
    log(1 - sigmoid(x)) = -softplus(x)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor


def jsd_bound(real: Tensor, fake: Tensor) -> Tensor:
    """f-GAN JSD lower bound (paper eq. 4 with T = logits), to be maximized by T:
    E_P[-sp(-T)] - E_Q[sp(T)] = E_P[log D] + E_Q[log(1 - D)]; its maximum is 2 JSD - log 4."""
    return -F.softplus(-real).mean() - F.softplus(fake).mean()


def d_loss_jsd(real: Tensor, fake: Tensor) -> Tensor:
    # -(E log D(real) + E log(1 - D(fake))) = E sp(-real) + E sp(fake)
    return -jsd_bound(real, fake)


def g_loss_saturating(fake: Tensor) -> Tensor:
    # minimize E log(1 - D(fake)) = -E sp(fake)   (the original minimax GAN)
    return -F.softplus(fake).mean()


def g_loss_nonsaturating(fake: Tensor) -> Tensor:
    # minimize -E log D(fake) = E sp(-fake)        (the "-log D" trick)
    return F.softplus(-fake).mean()


def d_loss_wasserstein(real: Tensor, fake: Tensor) -> Tensor:
    # critic maximizes E f(real) - E f(fake)
    return fake.mean() - real.mean()


def g_loss_wasserstein(fake: Tensor) -> Tensor:
    return -fake.mean()


def d_loss_least_squares(real: Tensor, fake: Tensor) -> Tensor:
    # LSGAN (Mao et al. 2017), targets a=0 (fake), b=1 (real): 1/2 E(D(r)-1)^2 + 1/2 E D(f)^2
    return 0.5 * (real - 1).pow(2).mean() + 0.5 * fake.pow(2).mean()


def g_loss_least_squares(fake: Tensor) -> Tensor:
    # 1/2 E (D(f) - c)^2 with c = 1
    return 0.5 * (fake - 1).pow(2).mean()


def _penalty_precision(x: Tensor):
    """The precision of a penalty's forward and input gradient (the create_graph backward
    too: on the CPU it runs under the caller's autocast as well).

    Under bf16 autocast they stay in bf16, on the tensor cores: bf16 has fp32's exponent
    range, so the input gradient neither under- nor overflows, and the reductions (the
    sum of outputs, the squared norm, the mean) run in fp32 (`_input_grad`, callers).
    tests/test_losses.py bounds the result against fp32. Under fp16 autocast the input
    gradient under/overflows (a GradScaler never sees it to unscale it), so fp16 and
    no autocast run with autocast off, in fp32: exact, at the price of an fp32 forward;
    the outer loss keeps its GradScaler scaling either way."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, enabled=False)


def _input_grad(out: Tensor, x: Tensor) -> Tensor:
    # x is fp32, so the gradient is too (in bf16 its last ops ran in bf16); the sum of the
    # outputs is taken in fp32 (a no-op for fp32 outputs).
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.flatten(1)


def contractive_penalty(net, x: Tensor) -> tuple[Tensor, Tensor]:
    """E_x ||d net(x) / dx||^2 (Rifai et al. 2011; as R1 in Mescheder et al. 2018, no 1/2).

    Returns (penalty, net(x)) so the caller can reuse the forward for its main loss.
    For a multi-output net the outputs are summed before differentiating (as R1 does).
    """
    x = x.detach().float().requires_grad_(True)
    with _penalty_precision(x):
        out = net(x)
        return _input_grad(out, x).pow(2).sum(1).mean(), out


def gradient_penalty(net, x_real: Tensor, x_fake: Tensor, center: float = 1.0,
                     generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E (||grad net(x_hat)|| - center)^2 at random
    interpolates x_hat = eps x_real + (1 - eps) x_fake, eps ~ U[0, 1] per sample."""
    shape = (x_real.shape[0],) + (1,) * (x_real.dim() - 1)
    # Seeded (a generator): drawn on the CPU, the same on every device. In training: on the
    # device itself (a host-to-device copy would wait for the device every critic step).
    if generator is not None:
        eps = torch.rand(shape, generator=generator, device="cpu").to(x_real.device)
    else:
        eps = torch.rand(shape, device=x_real.device)
    x_hat = (eps * x_real.detach().float() + (1 - eps) * x_fake.detach().float()).requires_grad_(True)
    with _penalty_precision(x_hat):
        norm = _input_grad(net(x_hat), x_hat).norm(dim=1)
        return (norm - center).pow(2).mean()
