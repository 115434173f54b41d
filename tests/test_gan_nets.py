"""ResNet G and D of implicit_gen.nets: shapes, reference structure, parameter counts, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from arena.registry import ConfigError
from implicit_gen.nets import (ARCHS, ResidualBlock, build_discriminator, build_generator, conv_mean_pool,
                               mean_pool_conv, upsample_conv)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- shapes at tiny width


@pytest.mark.parametrize("arch", ["resnet32", "resnet64"])
@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("out_dim", [1, 5])
def test_shapes_tiny(arch, resolution, channels, out_dim):
    torch.manual_seed(0)
    G = build_generator(arch, z_dim=16, channels=channels, resolution=resolution, width=8)
    D = build_discriminator(arch, channels=channels, resolution=resolution, width=8, out_dim=out_dim)
    z = torch.randn(3, 16)
    x = G(z)
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3, out_dim)
    assert D.features(x).shape == (3, D.feature_dim)


@pytest.mark.parametrize("resolution", [4, 8, 128])
def test_extreme_resolutions(resolution):
    for arch in ARCHS.names():
        G = build_generator(arch, z_dim=4, channels=1, resolution=resolution, width=2)
        D = build_discriminator(arch, channels=1, resolution=resolution, width=2, norm="layer")
        x = G(torch.randn(2, 4))
        assert x.shape == (2, 1, resolution, resolution) and D(x).shape == (2, 1)


def test_blocks_follow_resolution():
    # resnet32: one up-block per doubling from 4x4; D = optimized block, down-blocks to 8x8, 2 plain blocks
    for res, n_up, n_down in [(16, 2, 0), (32, 3, 1), (64, 4, 2)]:
        G = build_generator("resnet32", z_dim=8, channels=3, resolution=res, width=8)
        D = build_discriminator("resnet32", channels=3, resolution=res, width=8)
        assert len(G.blocks) == n_up
        assert len(D.blocks) == 1 + n_down + 2
    # resnet64: the map at side r has d * min(8, R / r) channels
    d = 4
    for res, g_widths in [(16, [4, 2, 1]), (32, [8, 4, 2, 1]), (64, [8, 8, 4, 2, 1]), (128, [8, 8, 8, 4, 2, 1])]:
        G = build_generator("resnet64", z_dim=8, channels=3, resolution=res, width=d)
        D = build_discriminator("resnet64", channels=3, resolution=res, width=d)
        G_widths = [G.blocks[0].conv1[1].in_channels] + [b.conv2.out_channels for b in G.blocks]
        assert G_widths == [d * m for m in g_widths]
        assert [D.input.out_channels] + [b.conv2[0].out_channels for b in D.blocks] == [d * m for m in g_widths[::-1]]
        assert D.feature_dim == 4 * 4 * d * g_widths[0]


def test_full_width_64_forward_backward():
    torch.manual_seed(0)
    G = build_generator("resnet64", z_dim=128, channels=3, resolution=64)
    D = build_discriminator("resnet64", channels=3, resolution=64, norm="layer")
    x = G(torch.randn(2, 128))
    assert x.shape == (2, 3, 64, 64)
    D(x).mean().backward()
    for net in (G, D):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ---------------------------------------------------------------- reference structure, by hand


def conv(k, a, b, bias=True):  # k x k conv from a to b channels
    return k * k * a * b + (b if bias else 0)


def linear(a, b):
    return a * b + b


def norm(c):  # BN, or layer norm over (C, H, W) with per-channel scale and shift
    return 2 * c


def test_param_counts_resnet32_reference():
    # gan_cifar_resnet.py, DIM_G = DIM_D = 128, z 128, RGB; every conv has a bias.
    W = 128
    up_block = norm(W) + conv(3, W, W) + norm(W) + conv(3, W, W) + conv(1, W, W)  # + upsample-conv 1x1 shortcut
    G = linear(128, 4 * 4 * W) + 3 * up_block + norm(W) + conv(3, W, 3)
    assert G == 1_204_483
    optimized = conv(3, 3, W) + conv(3, W, W) + conv(1, 3, W)  # conv, conv-mean-pool, mean-pool-conv shortcut
    down_block = conv(3, W, W) + conv(3, W, W) + conv(1, W, W)
    plain_block = conv(3, W, W) + conv(3, W, W)  # identity shortcut
    D = optimized + down_block + 2 * plain_block + linear(W, 1)
    assert D == 1_053_825
    assert n_params(build_generator("resnet32", z_dim=128, channels=3, resolution=32)) == G
    assert n_params(build_discriminator("resnet32", channels=3, resolution=32)) == D


def test_param_counts_resnet64_reference():
    # gan_64x64.py GoodGenerator / GoodDiscriminator, DIM = 64; Conv1 of each block has no bias.
    d = 64

    def up(a, b):  # BN1, upsample-conv a->b, BN2, conv b->b, upsample-conv 1x1 shortcut
        return norm(a) + conv(3, a, b, bias=False) + norm(b) + conv(3, b, b) + conv(1, a, b)

    def down(a, b, ln):  # [LN1], conv a->a, [LN2], conv-mean-pool a->b, mean-pool-conv 1x1 shortcut
        return conv(3, a, a, bias=False) + conv(3, a, b) + conv(1, a, b) + (2 * norm(a) if ln else 0)

    G = linear(128, 4 * 4 * 8 * d) + up(8 * d, 8 * d) + up(8 * d, 4 * d) + up(4 * d, 2 * d) + up(2 * d, d)
    G += norm(d) + conv(3, d, 3)
    assert G == 8_540_483
    widths = [(d, 2 * d), (2 * d, 4 * d), (4 * d, 8 * d), (8 * d, 8 * d)]
    D_ln = conv(3, 3, d) + sum(down(a, b, True) for a, b in widths) + linear(4 * 4 * 8 * d, 1)
    D = conv(3, 3, d) + sum(down(a, b, False) for a, b in widths) + linear(4 * 4 * 8 * d, 1)
    assert (D, D_ln) == (7_488_001, 7_491_841)
    assert n_params(build_generator("resnet64", z_dim=128, channels=3, resolution=64)) == G
    assert n_params(build_discriminator("resnet64", channels=3, resolution=64)) == D
    assert n_params(build_discriminator("resnet64", channels=3, resolution=64, norm="layer")) == D_ln


def test_param_counts_script_matches():
    from eval.param_counts import rows

    assert all(row[-1] for row in rows())


@pytest.mark.parametrize("arch", ["resnet32", "resnet64"])
def test_layer_norm_adds_only_norm_params(arch):
    plain = dict(build_discriminator(arch, channels=3, resolution=32, width=8).named_parameters())
    ln = dict(build_discriminator(arch, channels=3, resolution=32, width=8, norm="layer").named_parameters())
    extra = set(ln) - set(plain)
    assert set(plain) <= set(ln)
    assert all(plain[k].shape == ln[k].shape for k in plain)
    assert extra and all(k.split(".")[-2] in ("norm1", "norm2") and k.endswith(("scale", "shift")) for k in extra)
    # LN1 and LN2 over each residual block's input channels (not in resnet32's optimized block)
    block_inputs = {"resnet32": [8, 8, 8], "resnet64": [8, 16, 32]}[arch]  # 1 down + 2 plain / d-2d-4d-8d
    assert sum(ln[k].numel() for k in extra) == sum(2 * norm(a) for a in block_inputs)


# ---------------------------------------------------------------- the reference's resampling ops


def reference_upsample(x):
    # tflib UpsampleConv: concat([x] * 4, channels), NHWC depth_to_space(2):
    # out[2h+i, 2w+j, c] = in[h, w, (2i+j)C + c]
    tiled = repeat(x, "n c h w -> n h w (t c)", t=4)
    return rearrange(tiled, "n h w (i j c) -> n c (h i) (w j)", i=2, j=2)


def reference_mean_pool(x):
    # tflib MeanPool: the mean of the four strided slices
    return (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]) / 4


def with_random_bias(conv_layer):
    torch.nn.init.normal_(conv_layer.bias)  # biases start at zero; make them matter
    return conv_layer


@pytest.mark.parametrize("k", [1, 3])
def test_upsample_conv_block_is_the_reference_upsample_conv(k):
    torch.manual_seed(0)
    block = upsample_conv(3, 5, k)
    c = with_random_bias(block[1])
    x = torch.randn(2, 3, 4, 5)
    expected = F.conv2d(reference_upsample(x), c.weight, c.bias, padding=k // 2)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("k", [1, 3])
def test_conv_mean_pool_and_mean_pool_conv_blocks_are_the_reference_ones(k):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 6)
    cmp = conv_mean_pool(3, 4, k)
    c = with_random_bias(cmp[0])
    torch.testing.assert_close(cmp(x), reference_mean_pool(F.conv2d(x, c.weight, c.bias, padding=k // 2)))
    mpc = mean_pool_conv(3, 4, k)
    c = with_random_bias(mpc[1])
    torch.testing.assert_close(mpc(x), F.conv2d(reference_mean_pool(x), c.weight, c.bias, padding=k // 2))


def test_residual_up_and_down_blocks_compute_the_reference_formula():
    """shortcut(x) + conv2(relu(norm2(conv1(relu(norm1(x)))))) with the reference resampling."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    up = ResidualBlock(4, 6, "up", torch.nn.BatchNorm2d).train()
    for c in (up.conv1[1], up.conv2, up.shortcut[1]):
        with_random_bias(c)
    bn = lambda m, h: F.batch_norm(h, None, None, m.weight, m.bias, training=True, eps=m.eps)
    h = F.conv2d(reference_upsample(F.relu(bn(up.norm1, x))), up.conv1[1].weight, up.conv1[1].bias, padding=1)
    h = F.conv2d(F.relu(bn(up.norm2, h)), up.conv2.weight, up.conv2.bias, padding=1)
    short = F.conv2d(reference_upsample(x), up.shortcut[1].weight, up.shortcut[1].bias)
    torch.testing.assert_close(up(x), short + h)

    down = ResidualBlock(4, 6, "down", lambda c: torch.nn.Identity(), pool_first=True)
    for c in (down.conv1, down.conv2[0], down.shortcut[1]):
        with_random_bias(c)
    h = F.conv2d(F.relu(x), down.conv1.weight, down.conv1.bias, padding=1)
    h = reference_mean_pool(F.conv2d(F.relu(h), down.conv2[0].weight, down.conv2[0].bias, padding=1))
    short = F.conv2d(reference_mean_pool(x), down.shortcut[1].weight, down.shortcut[1].bias)
    torch.testing.assert_close(down(x), short + h)


def test_reference_init_scale():
    # tflib: uniform with std sqrt(4/(fan_in+fan_out)) ("he") or sqrt(2/(fan_in+fan_out)) ("glorot")
    torch.manual_seed(0)
    D = build_discriminator("resnet64", channels=3, resolution=64, width=32)
    he = D.blocks[2].conv1.weight  # 3x3, 128 -> 128
    glorot = D.blocks[2].shortcut[1].weight  # 1x1, 128 -> 256
    assert he.std().item() == pytest.approx(math.sqrt(4 / (9 * 128 + 9 * 128)), rel=0.05)
    assert glorot.std().item() == pytest.approx(math.sqrt(2 / (128 + 256)), rel=0.05)
    assert D.blocks[2].conv2[0].bias.abs().sum() == 0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("resolution", [0, 2, 28, 48, 100])
def test_unsupported_resolution(resolution):
    for arch in ARCHS.names():
        with pytest.raises(ConfigError, match="data.resolution"):
            build_generator(arch, z_dim=8, channels=3, resolution=resolution, width=8)
        with pytest.raises(ConfigError, match="data.resolution"):
            build_discriminator(arch, channels=3, resolution=resolution, width=8)


def test_unknown_arch_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'resnet32'"):
        build_generator("resnet23", z_dim=8, channels=3, resolution=32)
    with pytest.raises(ConfigError, match="did you mean 'resnet64'"):
        build_discriminator("resnet46", channels=3, resolution=64)


def test_unknown_norm_lists_choices():
    with pytest.raises(ConfigError, match="layer, none"):
        build_discriminator("resnet64", channels=3, resolution=64, width=8, norm="batch")


@pytest.mark.parametrize("arch", ["resnet32", "resnet64"])
def test_input_gradient_penalty_double_backward(arch):
    # WGAN-GP and the contractive penalty differentiate |dD/dx|^2 w.r.t. D's weights
    D = build_discriminator(arch, channels=1, resolution=16, width=4, norm="layer")
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    grad.square().sum().backward()
    # every weight gets a gradient (biases of the last layers cannot change dD/dx)
    assert all(p.grad is not None for name, p in D.named_parameters() if name.endswith("weight"))
