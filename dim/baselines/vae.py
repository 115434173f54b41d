"""`vae`: the variational autoencoder (Kingma & Welling 2014) and the beta-VAE (Higgins et
al. 2017) on the DIM encoder, the paper's VAE rows (Tables 1-3) and A.5's beta sweep.

    q(z | x) = N(mu, diag sigma^2):  mu = Y (the encoder's linear head on fc),
                                     log sigma = a second linear head on fc
    z = mu + sigma * eps,  eps ~ N(0, I);   x_hat = Dec(z)  (the DCGAN decoder, tanh)
    loss = E_batch[ sum_pixels (x_hat - x)^2 ]  +  beta * E_batch[ KL(q(z | x) || N(0, I)) ]
    KL = 1/2 sum_d (mu_d^2 + sigma_d^2 - 1 - 2 log sigma_d)

Source: cortex `vae.py` (the authors' runs): the per-image pixel sum of the squared error
over the batch, beta 1, a log-std head. Cortex puts an extra Linear 1024 + ReLU before the
heads; the heads sit on DIM's fc here, so conv / fc / Y are the probe points of every row.
The representation Y is mu. `features()` also gives 'z', a posterior sample;
`objective.ndm_code` says which of the two NDM reads (`ndm_layer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from arena.nets import eval_mode
from arena.objective import OBJECTIVES, Batch, DataInfo, ObjectiveOptions, Phase
from arena.schema import NonNegative

from ..objective import probe_points
from .common import BaselineObjective, squared_error

NDM_CODES = {"mu": "y", "sample": "z"}  # objective.ndm_code -> the feature NDM reads


@dataclass
class VAEOptions(ObjectiveOptions):
    name: str = "vae"
    beta: NonNegative = 1.0  # KL weight: 1 = the VAE (cortex); A.5 sweeps 0.1, 0.5, 1, 1.5, 2, 4
    # Which code NDM reads: "sample" (z = mu + sigma * eps) gives NDM on the scale of
    # Table 3's VAE row (1.62; a sample is ~20x below mu on digits), "mu" the representation Y.
    ndm_code: Literal["mu", "sample"] = "sample"
    active_kl: float = 0.1  # nats: a latent dimension whose batch-mean KL exceeds this counts as active


def gaussian_kl(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per dimension: 1/2 (mu^2 + sigma^2 - 1) - log sigma."""
    mu, log_sigma = mu.float(), log_sigma.float()
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 1) - log_sigma


@OBJECTIVES.register("vae")
class VAE(BaselineObjective):
    Options = VAEOptions

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        enc = self.build_encoder(cfg, info)
        log_sigma = nn.Linear(enc.feature_dims["fc"], cfg.model.y_dim)
        self.nets["encoder"] = nn.ModuleDict({"encoder": self.synced(enc), "log_sigma": log_sigma})
        self.nets["decoder"] = self.build_decoder(info)
        self._feature_noise: torch.Generator | None = None

    def phases(self) -> list[Phase]:
        return [Phase("vae", ("encoder", "decoder"))]

    @property
    def ndm_layer(self) -> str:
        """The key of features() NDM reads: 'y' (mu) or 'z' (a posterior sample)."""
        return NDM_CODES[self.opts.ndm_code]

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log sigma) of q(z | x), each [B, y_dim]."""
        player = self.nets["encoder"]
        out = player["encoder"](x)
        return out["y"], player["log_sigma"](out["fc"])

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        x = batch.x
        mu, log_sigma = self.posterior(x)
        z = mu + torch.exp(log_sigma) * self.noise(*mu.shape).to(mu.dtype)
        recon = squared_error(self.nets["decoder"](z), x).mean()
        kl_dims = gaussian_kl(mu, log_sigma).mean(0)  # [y_dim], batch mean
        kl = kl_dims.sum()
        return {"loss": recon + self.opts.beta * kl, "recon": recon.detach(), "kl": kl.detach(),
                "active_dims": (kl_dims.detach() > self.opts.active_kl).sum().float()}

    @torch.no_grad()
    def features(self, x: Tensor, ema: bool = False) -> dict[str, Tensor]:
        """DIM's probe points (Y = mu) and 'z': one posterior sample per image. The samples
        come from a CPU generator seeded once per objective, so a sequence of calls is
        reproducible and each call draws fresh eps (a fixed eps per batch position would
        tie the dimensions of inactive latents together and inflate NDM)."""
        with eval_mode(self.net("encoder", ema)) as player:
            out = player["encoder"](x.to(self.device))
            log_sigma = player["log_sigma"](out["fc"])
        if self._feature_noise is None:
            self._feature_noise = torch.Generator().manual_seed(self.cfg.run.seed)
        eps = torch.randn(out["y"].shape, generator=self._feature_noise).to(out["y"])
        return {**probe_points(out), "z": out["y"] + torch.exp(log_sigma) * eps}

    @torch.no_grad()
    def reconstruct(self, x: Tensor, sample: bool = False) -> Tensor:
        """Dec(mu) (or Dec(z) for a posterior sample), eval mode: the decoder's own reconstruction."""
        code = self.features(x)["z" if sample else "y"]
        with eval_mode(self.nets["decoder"]) as dec:
            return dec(code)
