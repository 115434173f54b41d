"""DIM building blocks: encoders, estimators (against hand values), critics, occlusion, coords."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.registry import ConfigError
from dim.coords import CoordinatePredictor, coordinate_loss
from dim.critics import (
    LOCAL_CRITICS,
    ConcatConvolveCritic,
    EncodeDotCritic,
    GlobalCritic,
    build_local_critic,
)
from dim.encoders import ENCODERS, build_encoder
from dim.estimators import (
    ESTIMATORS,
    dv_mi,
    jsd_mi,
    nce_mi,
    negative_mask,
    positive_mask,
    positives,
)
from dim.occlusion import occlusion_mask

LOG2 = math.log(2.0)



def sp(x: float) -> float:  # softplus by hand
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "arch,res,local,conv,fc",
    [
        ("dcgan32", 32, (16, 8, 8), (32, 4, 4), 128),  # width 1/8 of 128x8x8, 256x4x4, 1024
        ("dcgan32", 16, (16, 4, 4), (32, 2, 2), 128),
        ("alexnet64", 64, (48, 15, 15), (24, 7, 7), 512),
    ],
)
def test_encoder_shapes(channels, arch, res, local, conv, fc):
    E = build_encoder(arch, channels=channels, resolution=res, y_dim=10, width=0.125)
    out = E(torch.randn(3, channels, res, res))
    assert set(out) == {"conv", "fc", "y", "local"}
    assert out["local"].shape == (3, *local)
    assert out["conv"].shape == (3, *conv)
    assert out["fc"].shape == (3, fc)
    assert out["y"].shape == (3, 10)
    assert E.y_dim == 10 and E.local_channels == local[0] and E.local_shape == local
    assert E.conv_shape == conv
    assert E.feature_dims == {"conv": math.prod(conv), "fc": fc, "y": 10}
    assert E.feature_dims == {k: out[k].flatten(1).shape[1] for k in ("conv", "fc", "y")}


def test_encoder_full_width_matches_paper():
    # Built on the meta device: shapes only, no memory.
    with torch.device("meta"):
        E = build_encoder("dcgan32", channels=3, resolution=32)
        A = build_encoder("alexnet64", channels=3, resolution=64)
    assert E.layer_shapes == {"conv1": (64, 16, 16), "conv2": (128, 8, 8), "conv3": (256, 4, 4)}
    assert E.local_layer == "conv2" and E.local_shape == (128, 8, 8)  # official local map
    assert E.feature_dims == {"conv": 256 * 4 * 4, "fc": 1024, "y": 64}
    assert A.local_layer == "conv3" and A.local_shape == (384, 15, 15)
    assert A.feature_dims == {"conv": 192 * 7 * 7, "fc": 4096, "y": 64}
    assert [m.out_features for m in A.fc if isinstance(m, nn.Linear)] == [4096, 4096]


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_encoder_local_layer_choice(layer):
    E = build_encoder("dcgan32", channels=3, resolution=32, width=0.125, local_layer=layer)
    x = torch.randn(2, 3, 32, 32)
    out = E(x)
    assert out["local"].shape[1:] == E.layer_shapes[layer] == E.local_shape
    if layer == "conv3":
        assert torch.equal(out["local"], out["conv"])
    # The local map includes BN and ReLU (A.1): non-negative.
    assert (out["local"] >= 0).all()


def test_encoder_alexnet_local_layers():
    E = build_encoder("alexnet64", channels=1, resolution=64, width=0.125, local_layer="conv5")
    assert E(torch.randn(2, 1, 64, 64))["local"].shape == (2, 24, 7, 7)


def test_encoder_bad_config_messages():
    with pytest.raises(ConfigError, match=r"model\.local_layer.*'conv9'.*conv1, conv2, conv3"):
        build_encoder("dcgan32", channels=3, resolution=32, local_layer="conv9")
    with pytest.raises(ConfigError, match=r"data\.resolution.*dcgan32.*16, 32.*got 64"):
        build_encoder("dcgan32", channels=3, resolution=64)
    with pytest.raises(ConfigError, match=r"data\.resolution.*alexnet64.*64.*got 32"):
        build_encoder("alexnet64", channels=3, resolution=32)
    with pytest.raises(ConfigError, match=r"unknown encoder architecture 'dcgan'.*alexnet64, dcgan32"):
        build_encoder("dcgan", channels=3, resolution=32)
    assert ENCODERS.names() == ["alexnet64", "dcgan32"]
    E = build_encoder("dcgan32", channels=3, resolution=32, width=0.125)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        E(torch.randn(2, 1, 32, 32))


# ----------------------------------------------------------------------------- estimators


def separated(n: int, l: int, big: float = 20.0) -> torch.Tensor:
    return torch.where(positive_mask(n, l), torch.tensor(big), torch.tensor(-big))


def test_masks_select_exactly_the_positives():
    n, l = 5, 3
    pos, neg = positive_mask(n, l), negative_mask(n, l)
    assert pos.shape == neg.shape == (n, n, l)
    assert pos.sum() == n * l and neg.sum() == n * (n - 1) * l
    assert not (pos & neg).any() and (pos | neg).all()
    for i in range(n):
        for j in range(n):
            assert bool(pos[i, j].all()) == (i == j) and bool(pos[i, j].any()) == (i == j)
    s = torch.randn(n, n, l)
    assert torch.equal(positives(s), s[pos].view(n, l))
    assert torch.equal(positives(s)[2], s[2, 2])


def test_perfectly_separated_scores():
    n, l = 6, 4
    s = separated(n, l)
    assert jsd_mi(s).item() == pytest.approx(2 * LOG2, abs=1e-6)
    assert nce_mi(s).item() == pytest.approx(math.log(1 + (n - 1) * l), abs=1e-6)
    assert dv_mi(s).item() == pytest.approx(40.0, abs=1e-4)
    # Global DIM = L = 1, also accepted as [N, N].
    s2 = separated(n, 1)[..., 0]
    assert nce_mi(s2).item() == pytest.approx(math.log(n), abs=1e-6)
    assert jsd_mi(s2).item() == pytest.approx(2 * LOG2, abs=1e-6)


def test_all_equal_scores():
    n, l = 4, 3
    z = torch.zeros(n, n, l)
    assert jsd_mi(z).item() == pytest.approx(0.0, abs=1e-6)  # 2 log2 - sp(0) - sp(0) = 0
    one = torch.ones(n, n, l)
    # E_pos[log2 - sp(-1)] - E_neg[sp(1) - log2]
    assert jsd_mi(one).item() == pytest.approx(2 * LOG2 - sp(-1.0) - sp(1.0), abs=1e-6)
    for c in (0.0, 3.0, -7.0):
        s = torch.full((n, n, l), c)
        assert nce_mi(s).item() == pytest.approx(0.0, abs=1e-6)
        assert dv_mi(s).item() == pytest.approx(0.0, abs=1e-5)
        assert nce_mi(s, max_negatives=2).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_n2_l1():
    # rows: global vector i; cols: image j.  positives 1 and 2, negatives 0 and -1.
    s = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])
    jsd = (LOG2 - (sp(-1.0) + sp(-2.0)) / 2) - ((sp(0.0) + sp(-1.0)) / 2 - LOG2)
    nce = math.log(2) + 0.5 * (
        (1.0 - math.log(math.exp(1.0) + math.exp(0.0))) + (2.0 - math.log(math.exp(2.0) + math.exp(-1.0)))
    )
    dv = (1.0 + 2.0) / 2 - math.log((math.exp(0.0) + math.exp(-1.0)) / 2)
    assert jsd_mi(s).item() == pytest.approx(jsd, abs=1e-6)
    assert nce_mi(s).item() == pytest.approx(nce, abs=1e-6)
    assert dv_mi(s).item() == pytest.approx(dv, abs=1e-6)


def brute_nce(s: torch.Tensor, neg_images: list[list[int]]) -> float:
    """Loop version of eq. 5 (+ log K) for checking the vectorised one."""
    n, _, l = s.shape
    total, k = 0.0, None
    for i in range(n):
        negs = torch.cat([s[i, j].flatten() for j in neg_images[i]])
        for loc in range(l):
            cand = torch.cat([s[i, i, loc].view(1), negs]).double()
            total += (cand[0] - torch.logsumexp(cand, 0)).item()
            k = cand.numel()
    return math.log(k) + total / (n * l)


def test_nce_matches_loop_and_max_negatives():
    torch.manual_seed(0)
    n, l = 5, 3
    s = torch.randn(n, n, l) * 3
    full = [[j for j in range(n) if j != i] for i in range(n)]
    assert nce_mi(s).item() == pytest.approx(brute_nce(s, full), abs=1e-5)
    # Deterministic subset: the next m images cyclically.
    for m in (1, 2):
        nxt = [[(i + k) % n for k in range(1, m + 1)] for i in range(n)]
        assert nce_mi(s, max_negatives=m).item() == pytest.approx(brute_nce(s, nxt), abs=1e-5)
    assert nce_mi(s, max_negatives=n - 1).item() == pytest.approx(nce_mi(s).item(), abs=1e-6)
    assert nce_mi(s, max_negatives=100).item() == pytest.approx(nce_mi(s).item(), abs=1e-6)
    # Candidate count: 1 + m * L, never including the image itself (separated scores show it).
    sep = separated(8, 4)
    for m in (1, 3, 7):
        for gen in (None, torch.Generator().manual_seed(m)):
            assert nce_mi(sep, max_negatives=m, generator=gen).item() == pytest.approx(
                math.log(1 + m * 4), abs=1e-6)
    # Random subset: reproducible from the generator, a different draw gives a different value.
    a = nce_mi(s, max_negatives=2, generator=torch.Generator().manual_seed(1))
    b = nce_mi(s, max_negatives=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    vals = {round(nce_mi(s, max_negatives=2, generator=torch.Generator().manual_seed(k)).item(), 6)
            for k in range(10)}
    assert len(vals) > 1
    with pytest.raises(ValueError):
        nce_mi(s, max_negatives=0)


def test_jsd_dv_match_masked_means():
    torch.manual_seed(1)
    n, l = 4, 5
    s = torch.randn(n, n, l) * 2
    pos, neg = positive_mask(n, l), negative_mask(n, l)
    jsd = (LOG2 - F.softplus(-s[pos])).mean() - (F.softplus(s[neg]) - LOG2).mean()
    dv = s[pos].mean() - torch.log(torch.exp(s[neg]).mean())
    assert jsd_mi(s).item() == pytest.approx(jsd.item(), abs=1e-5)
    assert dv_mi(s).item() == pytest.approx(dv.item(), abs=1e-5)


def test_estimators_stable_for_huge_scores():
    torch.manual_seed(2)
    for name in ESTIMATORS.names():
        fn = ESTIMATORS.get(name)
        for s0 in (torch.randn(4, 4, 3) * 1e4, separated(4, 3, big=1e4), torch.full((4, 4, 3), -1e4)):
            s = s0.clone().requires_grad_()
            v = fn(s)
            v.backward()
            assert torch.isfinite(v), name
            assert torch.isfinite(s.grad).all(), name
    assert jsd_mi(separated(4, 3, big=1e4)).item() == pytest.approx(2 * LOG2)
    assert ESTIMATORS.names() == ["dv", "jsd", "nce"]
    with pytest.raises(ConfigError, match="valid choices: dv, jsd, nce"):
        ESTIMATORS.get("infonce")
    # half precision scores are promoted
    assert nce_mi(separated(4, 3).half()).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2"):
        jsd_mi(torch.zeros(1, 1, 3))


# ----------------------------------------------------------------------------- critics


def test_global_critic_matches_naive_concat():
    torch.manual_seed(3)
    n, d = 5, 7
    conv = torch.randn(n, 6, 2, 2)
    y = torch.randn(n, d)
    T = GlobalCritic(d, 24, width=1 / 32)
    s = T(y, conv)
    assert s.shape == (n, n, 1)
    # Naive: all N*N concatenations [flatten(c_j); y_i] through the same three layers.
    c_j = conv.flatten(1)[None].expand(n, n, -1)
    y_i = y[:, None].expand(n, n, -1)
    x = torch.cat([c_j, y_i], dim=-1)
    naive = T.l3(F.relu(T.l2(F.relu(T.l1(x)))))
    torch.testing.assert_close(s, naive, rtol=1e-5, atol=1e-5)
    # orientation: scores[i, j] only depends on y_i and conv_j
    s2 = T(y, conv.flip(0))
    torch.testing.assert_close(s2, s.flip(1))


def test_concat_convolve_matches_naive_tiling():
    torch.manual_seed(4)
    n, d, c, h, w = 3, 5, 4, 3, 2
    g = torch.randn(n, d)
    cmap = torch.randn(n, c, h, w)
    T = ConcatConvolveCritic(d, c, width=1 / 32)
    s = T(g, cmap)
    assert s.shape == (n, n, h * w)
    # Naive (Fig. 4): tile y_i over image j's map, concatenate, real 1x1 convs.
    cols = []
    for i in range(n):
        for j in range(n):
            tiled = g[i].view(1, d, 1, 1).expand(1, d, h, w)
            x = torch.cat([cmap[j : j + 1], tiled], dim=1)
            out = T.c3(F.relu(T.c2(F.relu(T.c1(x)))))  # [1, 1, h, w]
            cols.append(out.flatten())  # row-major l = row * w + col
    naive = torch.stack(cols).view(n, n, h * w)
    torch.testing.assert_close(s, naive, rtol=1e-5, atol=1e-5)


def test_encode_dot_scores_and_blocks():
    torch.manual_seed(5)
    n, d, c, h, w = 4, 6, 5, 3, 3
    g = torch.randn(n, d)
    cmap = torch.randn(n, c, h, w)
    T = EncodeDotCritic(d, c, width=1 / 128)  # 16 units
    s = T(g, cmap)
    assert s.shape == (n, n, h * w)
    e_g = T.global_net(g)
    e_c = T.local_net(cmap.permute(0, 2, 3, 1).reshape(-1, c)).view(n, h * w, -1)
    for i, j, l in [(0, 0, 0), (1, 3, 4), (3, 2, 8)]:
        assert s[i, j, l].item() == pytest.approx(torch.dot(e_g[i], e_c[j, l]).item(), abs=1e-4)
    # block layer norm: each embedding has zero mean, unit variance
    torch.testing.assert_close(e_c.mean(-1), torch.zeros(n, h * w), atol=1e-5, rtol=0)
    # near-identity shortcut when units >= inputs
    W = T.local_net.shortcut.weight
    torch.testing.assert_close(W[:c, :c].diagonal(), torch.ones(c))
    assert W.abs().le(1.0).all() and (W.abs().sum() - c) < 0.01 * W.numel()
    assert T.global_net.l1.out_features == 16
    assert EncodeDotCritic(d, c).global_net.l1.out_features == 2048  # mi_units default


def test_local_critic_registry():
    assert LOCAL_CRITICS.names() == ["concat_convolve", "encode_dot"]
    T = build_local_critic("encode_dot", global_dim=8, local_channels=4, width=1 / 64)
    assert isinstance(T, EncodeDotCritic) and T.global_net.l1.out_features == 32
    T = build_local_critic("concat_convolve", global_dim=8, local_channels=4, units=16)
    assert T.c1.out_channels == 16 and T.c1.in_channels == 12
    with pytest.raises(ConfigError, match=r"model\.local_critic.*valid choices: concat_convolve, encode_dot"):
        build_local_critic("dot", global_dim=8, local_channels=4)


@pytest.mark.parametrize("critic", ["global", "concat_convolve", "encode_dot"])
@pytest.mark.parametrize("estimator", ["jsd", "nce", "dv"])
def test_gradients_reach_encoder(critic, estimator):
    torch.manual_seed(6)
    E = build_encoder("dcgan32", channels=3, resolution=16, width=0.125)
    out = E(torch.randn(4, 3, 16, 16))
    if critic == "global":
        T = GlobalCritic(E.y_dim, E.feature_dims["conv"], width=1 / 16)
        s = T(out["y"], out["conv"])
    else:
        T = build_local_critic(critic, global_dim=E.y_dim, local_channels=E.local_channels, width=1 / 16)
        s = T(out["y"], out["local"])
    n_loc = 1 if critic == "global" else E.local_shape[1] * E.local_shape[2]
    assert s.shape == (4, 4, n_loc)
    loss = -ESTIMATORS.get(estimator)(s)
    loss.backward()
    for p in [E.convs["conv1"][0].weight, E.out.weight, *T.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert E.convs["conv1"][0].weight.grad.abs().sum() > 0  # through the local / conv map
    assert E.out.weight.grad.abs().sum() > 0  # through Y


# ----------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize("res,block", [(32, 10), (16, 4), (20, 10), (64, 10)])
def test_occlusion_constraints(res, block):
    gen = torch.Generator().manual_seed(7)
    m = occlusion_mask(400, res, block=block, generator=gen)
    assert m.shape == (400, 1, res, res) and m.dtype == torch.float32
    assert ((m == 0) | (m == 1)).all()
    win = F.avg_pool2d(m, block, stride=1).flatten(1)  # mean of every block x block window
    assert (win.max(1).values == 1).all()  # one fully visible block x block region per mask
    assert (win.min(1).values == 0).all()  # one fully occluded region per mask
    frac = m.mean().item()
    assert 0.3 < frac < 0.7  # neither all nor nothing on average
    again = occlusion_mask(400, res, block=block, generator=torch.Generator().manual_seed(7))
    assert torch.equal(m, again)


def test_occlusion_rejects_too_small_images():
    with pytest.raises(ConfigError, match=r"data\.resolution=16"):
        occlusion_mask(2, 16, block=10)


# ----------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("mode,classes", [("absolute", (4, 3)), ("relative", (7, 5))])
def test_coordinate_loss_at_chance_for_zero_heads(mode, classes):
    torch.manual_seed(8)
    P = CoordinatePredictor(8, 5, grid=(4, 3), mode=mode, width=1 / 32)
    assert P.n_classes == classes
    for head in (P.head_row, P.head_col):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    y, cmap = torch.randn(6, 8), torch.randn(6, 5, 4, 3)
    loss = coordinate_loss(P, y, cmap, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(classes[0]) + math.log(classes[1]), abs=1e-5)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_coordinate_loss_learns_position_features(mode):
    torch.manual_seed(9)
    n, h, w = 8, 3, 3
    # Local features are one-hot positions: coordinates are trivially predictable.
    cmap = torch.eye(h * w).view(1, h * w, h, w).expand(n, -1, -1, -1).contiguous()
    y = torch.randn(n, 4)
    P = CoordinatePredictor(4, h * w, grid=(h, w), mode=mode, width=1 / 8)
    opt = torch.optim.Adam(P.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = coordinate_loss(P, y, cmap, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_coordinate_gradients_reach_encoder():
    E = build_encoder("dcgan32", channels=1, resolution=16, width=0.125)
    out = E(torch.randn(4, 1, 16, 16))
    P = CoordinatePredictor(E.y_dim, E.local_channels, grid=E.local_shape[1:], mode="relative", width=1 / 16)
    coordinate_loss(P, out["y"], out["local"], generator=torch.Generator().manual_seed(0)).backward()
    assert E.convs["conv1"][0].weight.grad.abs().sum() > 0 and E.out.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="valid choices: absolute, relative"):
        CoordinatePredictor(4, 4, grid=(2, 2), mode="diagonal")
