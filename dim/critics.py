"""MI critics T(global, local) that score every pair in a batch (paper App. A.1, Tables 5-8).

All critics take (g, c): g the global input [N, Dg] (Y), c a feature map [N, C, h, w],
and return scores [N, N, L] with

    scores[i, j, l] = T(g_i, c_j at location l),   l = row * w + col,

the layout `dim.estimators` reads (positives on i == j). `units` is the hidden size at
width 1 and `width` scales it (tests use small widths).

Separable first layer. GlobalCritic and ConcatConvolveCritic start with a linear map of
a concatenation [c; g]; W [c; g] + b = W_c c + W_g g + b, so we apply W_c to the N (or
N*L) local inputs and W_g to the N global inputs once and add by broadcasting into the
[N, N, (L,) units] hidden tensor. That is mathematically identical to concatenating all
N*N pairs and applying W (the tests check it) but costs O(N (L) (C + Dg) units) instead of
O(N^2 (L) (C + Dg) units) for the first layer; the later layers still see all N^2 pairs.
The weight is stored whole (one Linear / 1x1 Conv over the concatenation [c; g]) and split
at call time, so checkpoints look like the naive network's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from arena.registry import Registry

from .encoders import scaled

LOCAL_CRITICS: Registry = Registry("local MI critic")


def _locations(c: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, L, C] with l = row * w + col."""
    return rearrange(c, "n c h w -> n (h w) c")


class GlobalCritic(nn.Module):
    """Global DIM critic (Table 5): MLP 512-512-1 on [flatten(C(x_j)), Y(x_i)] -> [N, N, 1].

    conv_features: the flattened size of the last conv map (encoder.feature_dims["conv"]).
    """

    def __init__(self, global_dim: int, conv_features: int, units: int = 512, width: float = 1.0):
        super().__init__()
        u = scaled(units, width)
        self.conv_features = conv_features
        self.l1 = nn.Linear(conv_features + global_dim, u)  # input ordering [c; g] (A.1)
        self.l2 = nn.Linear(u, u)
        self.l3 = nn.Linear(u, 1)

    def forward(self, g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c.flatten(1)
        w_c, w_g = self.l1.weight.split([self.conv_features, g.shape[1]], dim=1)
        a_c = F.linear(c, w_c, self.l1.bias)  # [N, U]   (image j)
        a_g = F.linear(g, w_g)  # [N, U]                  (image i)
        h = F.relu(rearrange(a_g, "i u -> i 1 u") + rearrange(a_c, "j u -> 1 j u"))  # relu(W [c_j; g_i] + b)
        h = F.relu(self.l2(h))
        return self.l3(h)  # [N, N, 1]


@LOCAL_CRITICS.register("concat_convolve")
class ConcatConvolveCritic(nn.Module):
    """Local DIM concat-and-convolve critic (Fig. 4, Table 6, eq. 9-10).

    Y tiled over the local map and concatenated at every location, then 1x1 convs
    512 ReLU, 512 ReLU, 1. A 1x1 conv is a linear map of each location's channel vector,
    so the layers are applied as linear maps over the last axis of [N, N, L, U]. Memory is
    O(N^2 L U): the reason the paper moved to encode-and-dot for its main results.
    """

    def __init__(self, global_dim: int, local_channels: int, units: int = 512, width: float = 1.0):
        super().__init__()
        u = scaled(units, width)
        self.local_channels = local_channels
        self.c1 = nn.Conv2d(local_channels + global_dim, u, 1)  # input ordering [c; g] (eq. 9)
        self.c2 = nn.Conv2d(u, u, 1)
        self.c3 = nn.Conv2d(u, 1, 1)

    @staticmethod
    def _as_linear(conv: nn.Conv2d) -> torch.Tensor:
        return conv.weight.flatten(1)  # [out, in, 1, 1] -> [out, in]

    def forward(self, g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w1 = self._as_linear(self.c1)
        w_c, w_g = w1.split([self.local_channels, g.shape[1]], dim=1)
        a_c = F.linear(_locations(c), w_c, self.c1.bias)  # [N_j, L, U]
        a_g = F.linear(g, w_g)  # [N_i, U]
        h = F.relu(rearrange(a_g, "i u -> i 1 1 u") + rearrange(a_c, "j l u -> 1 j l u"))
        h = F.relu(F.linear(h, self._as_linear(self.c2), self.c2.bias))
        return F.linear(h, self._as_linear(self.c3), self.c3.bias).squeeze(-1)  # [N, N, L]


class _EmbedBlock(nn.Module):
    """x -> LayerNorm(W2 relu(BN(W1 x)) + S x), per vector (Tables 7-8; official mi_networks).

    Used on the global vector (as Linear layers) and on every location of the local map
    (1x1 convs = the same Linear layers applied to each location's channel vector; batch
    norm then normalizes over images and locations, like BatchNorm2d). The shortcut S
    starts near the identity when units >= inputs (official code: U(-0.01, 0.01) with ones
    on the diagonal), so the embedding starts as "the features, padded".

    Differences from the paper's tables, following the official code as REFERENCES.md
    records it: BN after the first layer, no ReLU on the shortcut, and LayerNorm ("block
    layer norm") on the global branch too.
    """

    def __init__(self, n_in: int, units: int):
        super().__init__()
        self.l1 = nn.Linear(n_in, units, bias=False)  # BN adds the bias
        self.bn = nn.BatchNorm1d(units)
        self.l2 = nn.Linear(units, units)
        self.shortcut = nn.Linear(n_in, units)
        self.ln = nn.LayerNorm(units)
        if units >= n_in:
            with torch.no_grad():
                self.shortcut.weight.uniform_(-0.01, 0.01)
                self.shortcut.weight[torch.arange(n_in), torch.arange(n_in)] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, n_in] -> [M, units]
        h = self.l2(F.relu(self.bn(self.l1(x))))
        return self.ln(h + self.shortcut(x))


@LOCAL_CRITICS.register("encode_dot")
class EncodeDotCritic(nn.Module):
    """Local DIM encode-and-dot critic (Fig. 5, Tables 7-8): T(g, c_l) = <S(g), L(c_l)>.

    Both sides are embedded into `units` (mi_units, 2048 by default) dimensions and all
    N x N x L scores are one einsum, so the cost is linear in N*L for the embeddings plus
    one [N, U] x [U, N*L] matmul. No temperature, as in the official code.
    """

    def __init__(self, global_dim: int, local_channels: int, units: int = 2048, width: float = 1.0):
        super().__init__()
        u = scaled(units, width)
        self.global_net = _EmbedBlock(global_dim, u)
        self.local_net = _EmbedBlock(local_channels, u)

    def forward(self, g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        e_g = self.global_net(g)  # [N, U]
        e_c = self.local_net(rearrange(c, "n c h w -> (n h w) c"))  # every location of every image
        e_c = rearrange(e_c, "(n l) u -> n l u", n=c.shape[0])
        return einsum(e_g, e_c, "i u, j l u -> i j l")


def build_local_critic(name: str, *, global_dim: int, local_channels: int,
                       units: int | None = None, width: float = 1.0,
                       key: str = "model.local_critic") -> nn.Module:
    """A local critic by registry name; units=None takes the class default (512 / 2048)."""
    cls = LOCAL_CRITICS.get(name, key=key)
    kwargs = {} if units is None else {"units": units}
    return cls(global_dim, local_channels, width=width, **kwargs)
