"""The implicit-encoder generator (Hjelm et al. 2019, A.7/A.8) and its GAN baselines."""
from implicit_gen.nets import ARCHS, build_discriminator, build_generator

__all__ = ["ARCHS", "build_discriminator", "build_generator"]
