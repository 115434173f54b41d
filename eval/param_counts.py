"""Parameter counts of our G and D against the reference nets, at reference width.

    python -m eval.param_counts

The reference side lists the trainable variables the TensorFlow code creates
(igul222/improved_wgan_training, `gan_cifar_resnet.py` unconditional and `gan_64x64.py`
GoodGenerator / GoodDiscriminator; tflib names and shapes), derived by hand from its
structure. "match" means the counts agree and the multisets of tensor shapes agree
(conv filters (k, k, in, out) -> torch (out, in, k, k), linear W (in, out) -> (out, in)).
Exits 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import math
import sys

from implicit_gen.nets import build_discriminator, build_generator

Var = tuple[str, tuple[int, ...]]


def _conv(name: str, a: int, b: int, k: int, bias: bool = True) -> list[Var]:
    return [(f"{name}.Filters", (k, k, a, b))] + ([(f"{name}.Biases", (b,))] if bias else [])


def _linear(name: str, a: int, b: int) -> list[Var]:
    return [(f"{name}.W", (a, b)), (f"{name}.b", (b,))]


def _norm(name: str, c: int) -> list[Var]:
    # tflib Batchnorm and Layernorm both make a per-channel offset and scale (moving stats are not trainable)
    return [(f"{name}.offset", (c,)), (f"{name}.scale", (c,))]


def cifar_resnet(dim: int = 128, z_dim: int = 128, channels: int = 3) -> tuple[list[Var], list[Var]]:
    """gan_cifar_resnet.py with CONDITIONAL = ACGAN = False, NORMALIZATION_D = False."""
    G = _linear("Generator.Input", z_dim, 4 * 4 * dim)
    for i in (1, 2, 3):  # resample='up', every conv with a bias
        n = f"Generator.{i}"
        G += _conv(f"{n}.Shortcut", dim, dim, 1) + _norm(f"{n}.N1", dim) + _conv(f"{n}.Conv1", dim, dim, 3)
        G += _norm(f"{n}.N2", dim) + _conv(f"{n}.Conv2", dim, dim, 3)
    G += _norm("Generator.OutputN", dim) + _conv("Generator.Output", dim, channels, 3)

    D = _conv("Discriminator.1.Shortcut", channels, dim, 1)  # OptimizedResBlockDisc1
    D += _conv("Discriminator.1.Conv1", channels, dim, 3) + _conv("Discriminator.1.Conv2", dim, dim, 3)
    D += _conv("Discriminator.2.Shortcut", dim, dim, 1)  # resample='down'
    D += _conv("Discriminator.2.Conv1", dim, dim, 3) + _conv("Discriminator.2.Conv2", dim, dim, 3)
    for i in (3, 4):  # resample=None, identity shortcut
        D += _conv(f"Discriminator.{i}.Conv1", dim, dim, 3) + _conv(f"Discriminator.{i}.Conv2", dim, dim, 3)
    D += _linear("Discriminator.Output", dim, 1)
    return G, D


def good_64x64(
    dim: int = 64, z_dim: int = 128, channels: int = 3, layer_norm: bool = True
) -> tuple[list[Var], list[Var]]:
    """gan_64x64.py GoodGenerator / GoodDiscriminator; layer_norm=True is MODE='wgan-gp'."""
    d = dim
    G = _linear("Generator.Input", z_dim, 4 * 4 * 8 * d)
    for i, (a, b) in enumerate([(8 * d, 8 * d), (8 * d, 4 * d), (4 * d, 2 * d), (2 * d, d)], 1):
        n = f"Generator.Res{i}"  # resample='up'; Conv1 has biases=False
        G += _conv(f"{n}.Shortcut", a, b, 1) + _norm(f"{n}.BN1", a) + _conv(f"{n}.Conv1", a, b, 3, bias=False)
        G += _norm(f"{n}.BN2", b) + _conv(f"{n}.Conv2", b, b, 3)
    G += _norm("Generator.OutputN", d) + _conv("Generator.Output", d, channels, 3)

    D = _conv("Discriminator.Input", channels, d, 3)
    for i, (a, b) in enumerate([(d, 2 * d), (2 * d, 4 * d), (4 * d, 8 * d), (8 * d, 8 * d)], 1):
        n = f"Discriminator.Res{i}"  # resample='down': Conv1 a->a without bias, Conv2 a->b
        D += _conv(f"{n}.Shortcut", a, b, 1) + _conv(f"{n}.Conv1", a, a, 3, bias=False) + _conv(f"{n}.Conv2", a, b, 3)
        if layer_norm:
            D += _norm(f"{n}.BN1", a) + _norm(f"{n}.BN2", a)
    D += _linear("Discriminator.Output", 4 * 4 * 8 * d, 1)
    return G, D


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        k, k2, a, b = shape
        return (b, a, k, k2)
    if len(shape) == 2:
        return shape[::-1]
    return shape


def rows() -> list[tuple[str, str, int, int, int, bool]]:
    """(arch, net, resolution, ours, reference, match) at reference width, z_dim 128, RGB."""
    cifar_G, cifar_D = cifar_resnet()
    good_G, good_D_ln = good_64x64(layer_norm=True)
    _, good_D = good_64x64(layer_norm=False)
    cases = [
        ("resnet32", "G", 32, build_generator("resnet32", z_dim=128, channels=3, resolution=32), cifar_G),
        ("resnet32", "D", 32, build_discriminator("resnet32", channels=3, resolution=32), cifar_D),
        ("resnet64", "G", 64, build_generator("resnet64", z_dim=128, channels=3, resolution=64), good_G),
        ("resnet64", "D", 64, build_discriminator("resnet64", channels=3, resolution=64), good_D),
        ("resnet64", "D (layer norm)", 64,
         build_discriminator("resnet64", channels=3, resolution=64, norm="layer"), good_D_ln),
    ]
    out = []
    for arch, net, res, module, ref in cases:
        ours = sum(p.numel() for p in module.parameters())
        theirs = sum(math.prod(shape) for _, shape in ref)
        same_shapes = sorted(tuple(p.shape) for p in module.parameters()) == sorted(_torch_shape(s) for _, s in ref)
        out.append((arch, net, res, ours, theirs, ours == theirs and same_shapes))
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m eval.param_counts", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    table = rows()
    print(f"{'arch':<10} {'net':<16} {'res':>4} {'ours':>12} {'reference':>12}  match")
    for arch, net, res, ours, theirs, match in table:
        print(f"{arch:<10} {net:<16} {res:>4} {ours:>12,} {theirs:>12,}  {'yes' if match else 'NO'}")
    return 0 if all(row[-1] for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
