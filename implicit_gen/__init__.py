"""The implicit-encoder generator (Hjelm et al. 2019, A.7/A.8) and its GAN baselines.
Importing the package registers its objectives (ie, nsgan_cp, wgan_gp, gan, lsgan)."""
from implicit_gen.gans import NSGANCP, WGANGP, LSGAN, SaturatingGAN
from implicit_gen.ie import ImplicitEncoder
from implicit_gen.nets import ARCHS, build_discriminator, build_generator

__all__ = ["ARCHS", "ImplicitEncoder", "LSGAN", "NSGANCP", "SaturatingGAN", "WGANGP", "build_discriminator",
           "build_generator"]
