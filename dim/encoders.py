"""DIM encoders E = f o C (paper sec. 3, App. A.1): a conv stack C, fc layers f, a linear Y.

Two architectures by name in `ENCODERS`: ``dcgan32`` (the paper's CIFAR encoder, 32 or
16 px) and ``alexnet64`` (Tiny ImageNet / STL-10, 64 px; the official code's
``alex64x64`` layers). Every hidden layer has batch norm and ReLU; a named conv layer's
output is the whole block, so the maps the MI critics see include them (A.1). Which
resolutions and local layers an architecture takes is decided by `encoder_spec` alone.
Layer tables and the choice of default local layer: docs/dim.md, "Encoders".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.registry import ConfigError, Registry


@dataclass(frozen=True)
class ConvSpec:
    channels: int  # at width 1
    kernel: int
    stride: int
    pad: int
    pool: bool = False  # max-pool 3x3 stride 2 after the ReLU


@dataclass(frozen=True)
class ArchSpec:
    convs: tuple[ConvSpec, ...]
    fc: tuple[int, ...]  # hidden fc units at width 1
    resolutions: tuple[int, ...]
    default_local: str

    @property
    def layers(self) -> list[str]:
        return [f"conv{k}" for k in range(1, len(self.convs) + 1)]

    def receptive_field(self, layer: str) -> int:
        """Input pixels one feature of `layer` (after its pooling) sees along each axis:
        r += (kernel - 1) * jump, jump *= stride, through each conv and max-pool (3, 2)."""
        field, jump = 1, 1
        for name, s in zip(self.layers, self.convs):
            field, jump = field + (s.kernel - 1) * jump, jump * s.stride
            if s.pool:
                field, jump = field + 2 * jump, jump * 2
            if name == layer:
                break
        return field


ENCODERS: Registry[ArchSpec] = Registry("encoder architecture")

ENCODERS.register("dcgan32")(
    ArchSpec(
        convs=(ConvSpec(64, 4, 2, 1), ConvSpec(128, 4, 2, 1), ConvSpec(256, 4, 2, 1)),
        fc=(1024,),
        resolutions=(32, 16),
        default_local="conv2",
    )
)
ENCODERS.register("alexnet64")(
    ArchSpec(
        convs=(
            ConvSpec(96, 3, 1, 1, pool=True),
            ConvSpec(192, 3, 1, 1, pool=True),
            ConvSpec(384, 3, 1, 1),
            ConvSpec(384, 3, 1, 1),
            ConvSpec(192, 3, 1, 1, pool=True),
        ),
        fc=(4096, 4096),
        resolutions=(64,),
        default_local="conv3",
    )
)


def scaled(n: int, width: float) -> int:
    """A hidden unit count times the width multiplier, at least 1."""
    return max(1, int(round(n * width)))


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class ConvEncoder(nn.Module):
    """Conv blocks conv1..convK, fc blocks, linear Y; forward returns every DIM tap.

    Attributes the critics, probes and objective read:
      y_dim                       size of Y
      layer_shapes[name]          (C, h, w) of each conv block's output
      local_layer, local_shape    the map used for local DIM, and its (C, h, w)
      local_channels              local_shape[0]
      conv_shape                  (C, h, w) of the last conv block (the global critic's C(x))
      feature_dims                {"conv": C*h*w, "fc": units, "y": y_dim}, flattened sizes for probes
    """

    def __init__(self, spec: ArchSpec, *, channels: int, resolution: int, y_dim: int,
                 width: float, local_layer: str | None):
        super().__init__()
        self.y_dim = y_dim
        self.in_shape = (channels, resolution, resolution)
        self.convs = nn.ModuleDict()
        self.layer_shapes: dict[str, tuple[int, int, int]] = {}
        c_in, size = channels, resolution
        for k, s in enumerate(spec.convs, start=1):
            c_out = scaled(s.channels, width)
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, s.kernel, s.stride, s.pad, bias=False),  # BN adds the bias
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            size = _conv_out(size, s.kernel, s.stride, s.pad)
            if s.pool:
                layers.append(nn.MaxPool2d(3, 2))
                size = _conv_out(size, 3, 2, 0)
            name = f"conv{k}"
            self.convs[name] = nn.Sequential(*layers)
            self.layer_shapes[name] = (c_out, size, size)
            c_in = c_out

        self.conv_shape = self.layer_shapes[f"conv{len(spec.convs)}"]
        n_in = self.conv_shape[0] * self.conv_shape[1] * self.conv_shape[2]
        fc: list[nn.Module] = []
        for units in spec.fc:
            n_out = scaled(units, width)
            fc += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]
            n_in = n_out
        self.fc = nn.Sequential(*fc)
        self.out = nn.Linear(n_in, y_dim)  # Y: no activation (prior matching adds its own sigmoid)

        self.local_layer = spec.default_local if local_layer is None else local_layer  # checked by encoder_spec
        self.local_shape = self.layer_shapes[self.local_layer]
        self.local_channels = self.local_shape[0]
        self.feature_dims = {
            "conv": self.conv_shape[0] * self.conv_shape[1] * self.conv_shape[2],
            "fc": n_in,
            "y": y_dim,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"encoder built for inputs [B, {', '.join(map(str, self.in_shape))}], "
                             f"got {list(x.shape)}")
        out: dict[str, torch.Tensor] = {}
        h = x
        for name, block in self.convs.items():
            h = block(h)
            if name == self.local_layer:
                out["local"] = h
        out["conv"] = h
        out["fc"] = self.fc(h.flatten(1))
        out["y"] = self.out(out["fc"])
        return out


def encoder_spec(arch: str, *, resolution: int, local_layer: str | None = None, width: float = 1.0,
                 y_dim: int = 1) -> ArchSpec:
    """The spec of `arch` once it is known to build as asked: the one check of the
    architecture, resolution, local layer and sizes (the config check and build_encoder
    both call it), naming the config key at fault."""
    spec = ENCODERS.get(arch, key="model.encoder")
    if resolution not in spec.resolutions:
        raise ConfigError(f"data.resolution: encoder '{arch}' supports resolutions "
                          f"{', '.join(map(str, sorted(spec.resolutions)))}, got {resolution}")
    if local_layer is not None and local_layer not in spec.layers:
        raise ConfigError(f"model.local_layer: unknown layer '{local_layer}' for '{arch}'; valid choices: "
                          f"{', '.join(spec.layers)} (or null for the default {spec.default_local})")
    if not width > 0:
        raise ConfigError(f"model.width: must be > 0, got {width}")
    if y_dim < 1:
        raise ConfigError(f"model.y_dim: must be >= 1, got {y_dim}")
    return spec


def build_encoder(arch: str, *, channels: int, resolution: int, y_dim: int = 64,
                  width: float = 1.0, local_layer: str | None = None) -> ConvEncoder:
    """The DIM encoder `arch` for [B, channels, resolution, resolution] inputs in [-1, 1]."""
    spec = encoder_spec(arch, resolution=resolution, local_layer=local_layer, width=width, y_dim=y_dim)
    if channels < 1:
        raise ConfigError(f"encoder needs channels >= 1, got {channels}")
    return ConvEncoder(spec, channels=channels, resolution=resolution, y_dim=y_dim,
                       width=width, local_layer=local_layer)
