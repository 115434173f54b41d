"""ResNet generators and discriminators of WGAN-GP, shared by the IE, NS-GAN-CP and WGAN-GP.

Structure follows Gulrajani et al. 2017, "Improved Training of Wasserstein GANs",
github.com/igul222/improved_wgan_training (written anew here, not copied): "resnet32" is
`gan_cifar_resnet.py`, "resnet64" is `gan_64x64.py`'s Good nets; any resolution 4 * 2^k
works. Block layouts, other resolutions, upsampling and the reference's initialization
(tflib "he" / "glorot" = xavier_uniform_ with gain sqrt(2) / 1): docs/generators.md,
"The ResNets".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from arena.registry import ConfigError, Registry

# ---------------------------------------------------------------- layers


def _init(layer: nn.Conv2d | nn.Linear, scheme: str) -> nn.Module:
    gain = math.sqrt(2.0) if scheme == "he" else 1.0  # see the module docstring
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def linear(a: int, b: int) -> nn.Linear:
    return _init(nn.Linear(a, b), "glorot")


def conv(a: int, b: int, k: int, *, bias: bool = True, init: str = "he") -> nn.Conv2d:
    return _init(nn.Conv2d(a, b, k, padding=k // 2, bias=bias), init)


def upsample_conv(a: int, b: int, k: int, *, bias: bool = True, init: str = "he") -> nn.Module:
    """Reference UpsampleConv: nearest 2x, then conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(a, b, k, bias=bias, init=init))


def conv_mean_pool(a: int, b: int, k: int, *, bias: bool = True, init: str = "he") -> nn.Module:
    """Reference ConvMeanPool: conv, then 2x2 mean."""
    return nn.Sequential(conv(a, b, k, bias=bias, init=init), nn.AvgPool2d(2))


def mean_pool_conv(a: int, b: int, k: int, *, bias: bool = True, init: str = "he") -> nn.Module:
    """Reference MeanPoolConv: 2x2 mean, then conv."""
    return nn.Sequential(nn.AvgPool2d(2), conv(a, b, k, bias=bias, init=init))


class LayerNormCHW(nn.Module):
    """Layer norm over (C, H, W) of each sample, then a per-channel scale and shift.

    y = (x - mean_chw) / sqrt(var_chw + 1e-5) * scale[c] + shift[c]  (tflib Layernorm, axes [1,2,3])
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        return x * self.scale[:, None, None] + self.shift[:, None, None]


# The discriminator's normalization inside its residual blocks (model.d_norm): channels -> layer.
NORMS: Registry[Callable[[int], nn.Module]] = Registry("discriminator norm")
NORMS.register("none")(lambda c: nn.Identity())
NORMS.register("layer")(LayerNormCHW)


class ResidualBlock(nn.Module):
    """Reference ResidualBlock: shortcut(x) + conv2(relu(norm2(conv1(relu(norm1(x)))))).

    resample  conv1                conv2                  shortcut (1x1, glorot)
    'up'      upsample-conv a->b   conv b->b              upsample-conv a->b
    'down'    conv a->a            conv-mean-pool a->b    conv-mean-pool or mean-pool-conv a->b
    None      conv a->b            conv b->b              identity if a == b else conv a->b

    conv1_bias: gan_cifar_resnet's conv1 has a bias, gan_64x64's does not.
    pool_first: the down shortcut is MeanPoolConv (gan_64x64) instead of ConvMeanPool
    (gan_cifar_resnet); the two are the same function (a 1x1 conv commutes with the mean).
    """

    def __init__(
        self,
        a: int,
        b: int,
        resample: str | None,
        norm: Callable[[int], nn.Module],
        *,
        conv1_bias: bool = True,
        pool_first: bool = False,
    ):
        super().__init__()
        if resample == "up":
            self.conv1 = upsample_conv(a, b, 3, bias=conv1_bias)
            self.conv2 = conv(b, b, 3)
            self.shortcut = upsample_conv(a, b, 1, init="glorot")
            mid = b
        elif resample == "down":
            self.conv1 = conv(a, a, 3, bias=conv1_bias)
            self.conv2 = conv_mean_pool(a, b, 3)
            self.shortcut = (mean_pool_conv if pool_first else conv_mean_pool)(a, b, 1, init="glorot")
            mid = a
        elif resample is None:
            self.conv1 = conv(a, b, 3, bias=conv1_bias)
            self.conv2 = conv(b, b, 3)
            self.shortcut = nn.Identity() if a == b else conv(a, b, 1, init="glorot")
            mid = b
        else:
            raise ValueError(f"resample must be 'up', 'down' or None, got {resample!r}")
        self.norm1 = norm(a)
        self.norm2 = norm(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return self.shortcut(x) + h


class OptimizedDiscBlock(nn.Module):
    """Reference OptimizedResBlockDisc1: conv2(relu(conv1(x))) + shortcut, halving H and W.

    conv1 = conv3x3 c->W, conv2 = conv-mean-pool W->W, shortcut = mean-pool-conv 1x1 c->W.
    No normalization and no activation before conv1 (it sees the image).
    """

    def __init__(self, a: int, b: int):
        super().__init__()
        self.conv1 = conv(a, b, 3)
        self.conv2 = conv_mean_pool(b, b, 3)
        self.shortcut = mean_pool_conv(a, b, 1, init="glorot")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv2(F.relu(self.conv1(x)))


# ---------------------------------------------------------------- nets


class Generator(nn.Module):
    """z [B, z_dim] -> linear -> [B, widths[0], 4, 4] -> up-blocks -> BN, ReLU, conv3x3, tanh."""

    def __init__(self, *, z_dim: int, channels: int, widths: list[int], conv1_bias: bool, out_init: str):
        super().__init__()
        self.z_dim = z_dim
        self.input = linear(z_dim, widths[0] * 4 * 4)
        self.blocks = nn.Sequential(*[
            ResidualBlock(a, b, "up", nn.BatchNorm2d, conv1_bias=conv1_bias)
            for a, b in zip(widths[:-1], widths[1:])
        ])
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out = conv(widths[-1], channels, 3, init=out_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.input(z).unflatten(1, (-1, 4, 4))
        x = self.blocks(x)
        return torch.tanh(self.out(F.relu(self.out_norm(x))))


class ResNet32Discriminator(nn.Module):
    """gan_cifar_resnet critic: optimized block, down-blocks to 8x8, two plain blocks,
    ReLU, mean over H and W, linear -> out_dim."""

    def __init__(self, *, channels: int, resolution: int, width: int, out_dim: int, norm: str):
        super().__init__()
        make_norm = NORMS.get(norm, key="model.d_norm")
        blocks: list[nn.Module] = [OptimizedDiscBlock(channels, width)]
        side = resolution // 2
        while side > 8:
            blocks.append(ResidualBlock(width, width, "down", make_norm))
            side //= 2
        blocks += [ResidualBlock(width, width, None, make_norm) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = width
        self.out = linear(width, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, width]: the pooled features the final linear layer reads."""
        return F.relu(self.blocks(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class ResNet64Discriminator(nn.Module):
    """gan_64x64 GoodDiscriminator: conv3x3 -> widths[0], down-blocks, flatten 4x4, linear -> out_dim."""

    def __init__(self, *, channels: int, widths: list[int], out_dim: int, norm: str):
        super().__init__()
        make_norm = NORMS.get(norm, key="model.d_norm")
        self.input = conv(channels, widths[0], 3, init="glorot")
        self.blocks = nn.Sequential(*[
            ResidualBlock(a, b, "down", make_norm, conv1_bias=False, pool_first=True)
            for a, b in zip(widths[:-1], widths[1:])
        ])
        self.feature_dim = widths[-1] * 4 * 4
        self.out = linear(self.feature_dim, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 4*4*widths[-1]]: the flattened features the final linear layer reads."""
        return self.blocks(self.input(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Arch:
    """How one architecture builds its G and D; `k` is log2(resolution / 4)."""

    default_width: int
    generator: Callable[..., nn.Module]
    discriminator: Callable[..., nn.Module]


ARCHS: Registry[Arch] = Registry("gan architecture")


def _resnet32_G(*, z_dim, channels, k, width):
    return Generator(z_dim=z_dim, channels=channels, widths=[width] * (k + 1), conv1_bias=True,
                     out_init="glorot")


def _resnet32_D(*, channels, k, width, out_dim, norm):
    return ResNet32Discriminator(channels=channels, resolution=4 * 2**k, width=width, out_dim=out_dim, norm=norm)


def _resnet64_widths(k: int, d: int) -> list[int]:
    """Channels of the maps at sides 4, 8, ..., 4 * 2^k: d * min(8, R / side)."""
    return [d * min(8, 2 ** (k - i)) for i in range(k + 1)]


def _resnet64_G(*, z_dim, channels, k, width):
    return Generator(z_dim=z_dim, channels=channels, widths=_resnet64_widths(k, width), conv1_bias=False,
                     out_init="he")


def _resnet64_D(*, channels, k, width, out_dim, norm):
    return ResNet64Discriminator(channels=channels, widths=_resnet64_widths(k, width)[::-1], out_dim=out_dim, norm=norm)


ARCHS.register("resnet32")(Arch(128, _resnet32_G, _resnet32_D))
ARCHS.register("resnet64")(Arch(64, _resnet64_G, _resnet64_D))


def _doublings(arch: str, resolution: int) -> int:
    """k with resolution = 4 * 2^k, or a ConfigError naming data.resolution."""
    k = int(resolution).bit_length() - 3 if isinstance(resolution, int) else -1
    if k < 0 or resolution != 4 * 2**k:
        raise ConfigError(
            f"data.resolution: gan architecture '{arch}' needs a resolution of 4 * 2^k "
            f"(4, 8, 16, 32, 64, 128, ...), got {resolution!r}"
        )
    return k


def _check_positive(**sizes: int | None) -> None:
    for name, value in sizes.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def build_generator(arch: str, *, z_dim: int, channels: int, resolution: int, width: int | None = None) -> nn.Module:
    """G(z: [B, z_dim]) -> images [B, channels, resolution, resolution] in [-1, 1]."""
    spec = ARCHS.get(arch)
    k = _doublings(arch, resolution)
    _check_positive(z_dim=z_dim, channels=channels, width=width)
    return spec.generator(z_dim=z_dim, channels=channels, k=k, width=width or spec.default_width)


def build_discriminator(
    arch: str,
    *,
    channels: int,
    resolution: int,
    width: int | None = None,
    out_dim: int = 1,
    norm: str = "none",
) -> nn.Module:
    """D(x: [B, channels, resolution, resolution]) -> [B, out_dim]; `D.features(x)` is the
    input of the last linear layer. norm: "none" (IE encoder, NS-GAN-CP) or "layer"
    (the WGAN-GP 64x64 critic's layer norm over (C, H, W), inside the residual blocks)."""
    spec = ARCHS.get(arch)
    k = _doublings(arch, resolution)
    _check_positive(channels=channels, width=width, out_dim=out_dim)
    NORMS.get(norm, key="model.d_norm")  # fails early on an unknown norm, listing the valid ones
    return spec.discriminator(channels=channels, k=k, width=width or spec.default_width, out_dim=out_dim, norm=norm)
