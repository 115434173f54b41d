"""How much information a representation carries: Donsker-Varadhan bounds trained by
gradient ascent, MINE for I(X; Y) (Table 3 "I(X, Y)") and the neural dependency measure
between Y's dimensions (Table 3 "NDM", Fig. 11). In nats."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from arena.data import to_float

from .fit import fit, seeded, standardizer


def dv_bound(t_joint: Tensor, t_marginal: Tensor) -> Tensor:
    """Donsker-Varadhan: E_J[T] - log E_M[e^T] (paper eq. 2), with log-mean-exp via logsumexp."""
    return t_joint.mean() - (torch.logsumexp(t_marginal.flatten(), 0) - math.log(t_marginal.numel()))


def _mlp(n_in: int, hidden: int, n_out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(n_in, hidden), nn.ReLU()]
        n_in = hidden
    return nn.Sequential(*mods, nn.Linear(n_in, n_out))


class MineStatistics(nn.Module):
    """T(x, y) = head([a(x); b(y)]): a is a small conv net on images (or an MLP on vectors),
    b an MLP on y. The embeddings are computed once per sample, so marginal pairs
    (x_i, y_perm(i)) cost one head evaluation each."""

    def __init__(self, x_shape: tuple[int, ...], y_dim: int, hidden: int = 256):
        super().__init__()
        if len(x_shape) == 3:  # images
            c, r = x_shape[0], x_shape[-1]
            convs: list[nn.Module] = []
            ch, side = c, r
            for out in (16, 32, 64):
                if side < 4:
                    break
                convs += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2)]
                ch, side = out, side // 2
            self.a = nn.Sequential(*convs, nn.Flatten(), nn.Linear(ch * side * side, hidden))
        else:
            self.a = _mlp(x_shape[0], hidden, hidden, layers=1)
        self.b = _mlp(y_dim, hidden, hidden, layers=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def pairs(self, ex: Tensor, ey: Tensor) -> Tensor:
        return self.head(torch.cat([ex, ey], 1)).squeeze(1)


def _decay(opt: torch.optim.Optimizer, steps: int, final: float):
    # "a decaying learning rate schedule ... reduced variance in estimates" (sec. 4.2):
    # exponential from lr to final * lr over the run.
    gamma = final ** (1.0 / max(1, steps))
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


def _maximize(T: nn.Module, batch_bound: Callable[[], Tensor], steps: int, lr: float, final_lr: float,
              average_last: int) -> list[float]:
    """Adam ascent on a DV bound with a decaying lr (MINE and NDM alike); returns the
    training-batch bounds of the last `average_last` steps (default a tenth)."""
    opt = torch.optim.Adam(T.parameters(), lr=lr)
    sched = _decay(opt, steps, final_lr)
    average_last = average_last or max(1, steps // 10)
    tail = []

    def after_step(step: int, negative_bound: Tensor) -> None:
        if step >= steps - average_last:
            tail.append(-float(negative_bound))

    # One epoch of the fit loop is one batch here, so the lr decays every step.
    fit(opt, sched, steps, lambda: (None,), lambda _: -batch_bound(), after_step)
    return tail


def mine_estimate(x: Tensor, y: Tensor, x_test: Tensor | None = None, y_test: Tensor | None = None,
                  steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, final_lr: float = 0.01,
                  hidden: int = 256, eval_shuffles: int = 10, average_last: int = 0, seed: int = 0,
                  device: str | torch.device = "cpu") -> float:
    """MINE (Belghazi et al. 2018): maximize the DV bound E_J[T] - log E_M[e^T] over a
    statistics network T(x, y) with Adam and an exponentially decaying lr; marginal samples
    pair x_i with y of a shuffled batch. x: images [N, C, H, W] (uint8 or [-1, 1]) or
    vectors [N, Dx]; y: [N, Dy] (standardized with the training statistics: an invertible
    per-dimension map, which leaves I(X; Y) unchanged and eases optimization).

    Returns the DV bound (nats) of the trained T on (x_test, y_test): the joint term over
    every test pair and the marginal term over `eval_shuffles` random pairings of the whole
    test set. With no test data, the mean of the training-batch bounds over the last
    `average_last` steps (default a tenth) is returned instead.
    """
    g = seeded(seed)
    device = torch.device(device)
    y = y.float().flatten(1)
    standardize = standardizer(y)
    yn = standardize(y)
    T = MineStatistics(tuple(x.shape[1:]), y.shape[1], hidden).to(device)
    n = len(x)
    batch_size = min(batch_size, n)

    def batch_bound() -> Tensor:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        xb, yb = to_float(x[idx]).to(device), yn[idx].to(device)
        ex, ey = T.a(xb), T.b(yb)
        perm = torch.randperm(batch_size, generator=g).to(device)
        return dv_bound(T.pairs(ex, ey), T.pairs(ex, ey[perm]))

    tail = _maximize(T, batch_bound, steps, lr, final_lr, average_last)
    if x_test is None:
        return float(np.mean(tail))
    yt = standardize(y_test.float().flatten(1))
    return _dv_on_heldout(lambda xb: T.a(to_float(xb).to(device)), lambda yb: T.b(yb.to(device)), T.pairs,
                          x_test, yt, eval_shuffles, g)


@torch.no_grad()
def _dv_on_heldout(embed_x, embed_y, pairs, x: Tensor, y: Tensor, shuffles: int, g: torch.Generator,
                   chunk: int = 1024) -> float:
    """DV bound of a trained critic on held-out pairs: joint = all (x_i, y_i), marginal =
    `shuffles` random pairings (x_i, y_pi(i)) of the whole set."""
    ex = torch.cat([embed_x(x[s:s + chunk]) for s in range(0, len(x), chunk)])
    ey = torch.cat([embed_y(y[s:s + chunk]) for s in range(0, len(y), chunk)])
    t_joint = pairs(ex, ey)
    t_marg = torch.cat([pairs(ex, ey[torch.randperm(len(ey), generator=g).to(ey.device)]) for _ in range(shuffles)])
    return float(dv_bound(t_joint, t_marg))


def shuffle_dims(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each column of y [N, D] permuted independently along the batch: samples of the
    product of y's marginals (Fig. 11)."""
    n, d = y.shape
    idx = torch.rand(n, d, generator=generator).argsort(0).to(y.device)  # an independent permutation per column
    return torch.gather(y, 0, idx)


def ndm(y: Tensor, y_test: Tensor | None = None, sigmoid: bool = False, steps: int = 3000,
        batch_size: int = 256, lr: float = 3e-4, final_lr: float = 0.1, hidden: int = 256,
        eval_shuffles: int = 10, average_last: int = 0, seed: int = 0,
        device: str | torch.device = "cpu") -> float:
    """Neural dependency measure (sec. 4.1, Fig. 11): a discriminator T(y) trained with the
    DV bound E_Y[T] - log E_{Y~}[e^T], where Y~ is the batch with every dimension shuffled
    independently across the batch; the bound estimates KL(P_Y || prod_d P_Yd), the total
    correlation: 0 for independent dimensions, larger the more dependent they are. (For
    Gaussian y it is -1/2 log det of the correlation matrix; the tests check it.)

    y is taken as is (no standardization), optionally through a sigmoid first: Table 3
    reports DIM's NDM both ways, because the estimate depends on the scale of its input.
    Returns the bound (nats) on y_test with `eval_shuffles` whole-set shufflings (or, with
    no test data, the mean training-batch bound over the last `average_last` steps).
    """
    g = seeded(seed)
    device = torch.device(device)
    f = torch.sigmoid if sigmoid else (lambda t: t)
    y = f(y.float().flatten(1))
    n, d = y.shape
    batch_size = min(batch_size, n)
    T = _mlp(d, hidden, 1).to(device)

    def batch_bound() -> Tensor:
        yb = y[torch.randint(0, n, (batch_size,), generator=g)]
        ys = shuffle_dims(yb, g)
        return dv_bound(T(yb.to(device)), T(ys.to(device)))

    tail = _maximize(T, batch_bound, steps, lr, final_lr, average_last)
    if y_test is None:
        return float(np.mean(tail))
    yt = f(y_test.float().flatten(1)).to(device)
    with torch.no_grad():
        t_joint = T(yt)
        t_marg = torch.cat([T(shuffle_dims(yt, g)) for _ in range(eval_shuffles)])
        return float(dv_bound(t_joint, t_marg))
