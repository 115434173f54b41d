"""The paper's comparison models (Tables 1-3, A.5) as encoder objectives of the shared core:
`vae` (and the beta-VAE), `aae` and `bigan`. Each keeps the DIM encoder under
nets["encoder"]["encoder"], so every probe reads conv / fc / Y from it as from DIM."""
from dim.baselines.aae import AAE
from dim.baselines.bigan import BiGAN
from dim.baselines.vae import VAE

__all__ = ["AAE", "BiGAN", "VAE"]
