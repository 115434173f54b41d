"""The paper's comparison models (Tables 1-3, A.5) as encoder objectives of the shared core:
`vae` (and the beta-VAE), `aae`, `bigan` and `nat`. Each keeps the DIM encoder under
nets["encoder"]["encoder"], so every probe reads conv / fc / Y from it as from DIM."""
from dim.baselines.aae import AAE
from dim.baselines.bigan import BiGAN
from dim.baselines.nat import NAT
from dim.baselines.vae import VAE

__all__ = ["AAE", "BiGAN", "NAT", "VAE"]
